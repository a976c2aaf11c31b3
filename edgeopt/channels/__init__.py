"""Coupled channel groups (the engine of channel pruning): op rules, channel scores, cut plans, repairs."""

from edgeopt.channels.bn_reestimate import reestimate_batchnorm
from edgeopt.channels.builder import ChannelGroup, ChannelGroups, GroupBuilder
from edgeopt.channels.groups import build_groups
from edgeopt.channels.importance import Criterion, activation_scores, reconstruction_scores, weight_scores
from edgeopt.channels.plan import PrunePlan, make_plan
from edgeopt.channels.repair import SinkFit, fit_sinks
from edgeopt.channels.rules import RULES

__all__ = [
    "ChannelGroup",
    "ChannelGroups",
    "Criterion",
    "GroupBuilder",
    "PrunePlan",
    "RULES",
    "SinkFit",
    "activation_scores",
    "build_groups",
    "fit_sinks",
    "make_plan",
    "reconstruction_scores",
    "reestimate_batchnorm",
    "weight_scores",
]
