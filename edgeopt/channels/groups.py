"""Build the coupled channel groups of a graph by walking it with the per-op rules.

The rules (:mod:`edgeopt.channels.rules`) build on the builder
(:mod:`edgeopt.channels.builder`); this module puts the two together and takes
the rule table as data, so a caller can add or replace the rule of an op
without either module importing the other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import onnx_ir as ir

from edgeopt.channels.builder import ChannelGroups, GroupBuilder
from edgeopt.channels.rule_kit import DEFAULT_DOMAINS, Rule, Unsafe
from edgeopt.channels.rules import RULES

logger = logging.getLogger(__name__)


def build_groups(model: ir.Model, *, rules: Mapping[str, Rule] = RULES) -> ChannelGroups:
    """The coupled-channel groups of ``model``'s main graph (nodes in topological order).

    Subgraphs and functions are not entered: a group used by an If/Loop or a
    function call is unprunable (no rule for that op).

    Args:
        model: The model; not changed.
        rules: Op type (default domain) -> its rule; an op without one blocks the
            groups that reach it.
    """
    builder = GroupBuilder(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 18)))
    for node in model.graph:
        apply_rule(builder, node, rules)
    for value in model.graph.outputs:
        if value in builder.layouts:
            builder.block(builder.layouts[value][1], f"reaches graph output '{value.name}'")
    groups = builder.finish()
    logger.info("channel groups: %d group(s), %d prunable", len(groups.groups), len(groups.prunable()))
    return groups


def apply_rule(b: GroupBuilder, node: ir.Node, rules: Mapping[str, Rule] = RULES) -> None:
    """Carry, consume or block the channel layouts on ``node``'s inputs."""
    laid = [i for i, v in enumerate(node.inputs) if v is not None and v in b.layouts]
    rule = rules.get(node.op_type) if node.domain in DEFAULT_DOMAINS else None
    name = node.name or node.op_type
    try:
        if rule is None:
            if laid:
                raise Unsafe(f"{node.op_type} '{name}' has no channel rule")
            return
        rule(b, node, laid)
    except Unsafe as e:
        for i in laid:
            value = node.inputs[i]
            assert value is not None
            b.block(b.layouts[value][1], str(e))
