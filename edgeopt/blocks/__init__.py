"""Residual blocks of a graph (the engine of layer dropping): find them, score their removal, bypass and repair them."""

from edgeopt.blocks.bypass import drop_blocks
from edgeopt.blocks.refit import repair
from edgeopt.blocks.residual import Block, Granularity, find_blocks
from edgeopt.blocks.scoring import BlockScore, fidelity_metric, greedy_pick, score_blocks

__all__ = [
    "Block",
    "BlockScore",
    "Granularity",
    "drop_blocks",
    "fidelity_metric",
    "find_blocks",
    "greedy_pick",
    "repair",
    "score_blocks",
]
