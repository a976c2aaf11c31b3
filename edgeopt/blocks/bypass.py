"""Drop residual blocks from a graph: bypass each one, then remove what nothing uses.

A block found by :func:`edgeopt.blocks.residual.find_blocks` spans ``start -> end``;
dropping it makes every use of ``end`` read ``start`` (a graph output keeps its
name). The ``drop-layers`` pass, the block scores and the layer-drop road all
drop blocks through :func:`drop_blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir

from edgeopt.blocks.residual import Block
from edgeopt.core.dead_code import remove_unused
from edgeopt.core.errors import PassOptionError
from edgeopt.core.rewire import bypass

DROPPED_KEY = "edgeopt.dropped_layers"
"""``model.metadata_props`` key listing what ``drop-layers`` dropped (it also makes the pass idempotent)."""


def drop_blocks(model: ir.Model, blocks: Sequence[Block]) -> int:
    """Bypass ``blocks`` (found on this very model) and remove what becomes unused; returns how many.

    Blocks may be consecutive (one's ``end`` is the next one's ``start``): they are
    bypassed in graph order, each reading the input its predecessor was replaced by.
    """
    values = {v.name: v for v in model.graph.inputs}
    values.update({o.name: o for node in model.graph for o in node.outputs})
    replaced: dict[ir.Value, ir.Value] = {}
    dropped = 0
    for block in blocks:
        if not block.droppable:
            raise PassOptionError(f"drop-layers: {block.name} cannot be dropped: {block.reason}.")
        start, end = values[block.start], values[block.end]
        while start in replaced:
            start = replaced[start]
        if not bypass(end, start):  # a graph input would become a graph output: copy it
            copy = ir.node("Identity", [start], num_outputs=1)
            producer = end.producer()
            assert producer is not None and producer.graph is not None
            producer.graph.insert_before(producer, copy)
            copy.outputs[0].type, copy.outputs[0].shape = start.type, start.shape
            bypass(end, copy.outputs[0])
        replaced[end] = start
        dropped += 1
    remove_unused(model)
    return dropped
