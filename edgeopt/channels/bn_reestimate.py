"""Re-estimate BatchNorm running statistics on calibration data (after pruning, before folding).

Pruning changes what reaches a BatchNorm that stays in the graph (a model not cleaned up,
or a BN that cannot fold), so its running mean and variance no longer match its input.
As PyTorch's BN recalibration does, a working copy normalizes every BatchNorm with the
*batch's* statistics (computed in the graph with ReduceMean, so only two per-channel
vectors per BN leave ONNX Runtime), and the running statistics become the average over
the calibration data: ``mean = E[x]``, ``var = E[x^2] - mean^2`` per channel. Batches are
streamed; memory does not grow with the data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.stream import stream_outputs
from edgeopt.core.rewire import write_constant
from edgeopt.core.runtime import Feeds

logger = logging.getLogger(__name__)


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def batchnorms(model: ir.Model) -> list[int]:
    """Indices (in graph order) of the inference-mode BatchNorms with constant statistics of their own."""
    found = []
    for index, node in enumerate(model.graph):
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") or len(node.inputs) < 5:
            continue
        stats = node.inputs[3:5]
        x = node.inputs[0]
        if (node.attributes.get_int("training_mode", 0) or x is None or x.shape is None
                or any(_const(v) is None or len(v.uses()) > 1 for v in stats if v is not None)):  # type: ignore[union-attr]
            continue
        found.append(index)
    return found


def _add_batch_stats(work: ir.Model, node: ir.Node, opset: int) -> tuple[str, str]:
    """Normalize ``node`` with its input's batch statistics; return the names of the (mean, E[x^2]) outputs."""
    x = node.inputs[0]
    assert x is not None and x.shape is not None
    axes = [0, *range(2, len(x.shape))]
    prefix = f"{node.name or 'bn'}__edgeopt_bn{id(node)}"
    new: list[ir.Node] = []

    def constant(array: np.ndarray, name: str) -> ir.Value:
        new.append(ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", ir.tensor(array, name=name))],
                           outputs=[ir.Value(name=name)]))
        return new[-1].outputs[0]

    def reduce(value: ir.Value, name: str) -> ir.Value:
        if opset >= 18:
            axes_value = constant(np.array(axes, np.int64), f"{name}_axes")
            out = ir.Node("", "ReduceMean", [value, axes_value], attributes=[ir.AttrInt64("keepdims", 1)],
                          outputs=[ir.Value(name=name)])
        else:
            out = ir.Node("", "ReduceMean", [value], attributes=[ir.AttrInt64s("axes", axes),
                                                                 ir.AttrInt64("keepdims", 1)],
                          outputs=[ir.Value(name=name)])
        new.append(out)
        return out.outputs[0]

    def op(op_type: str, inputs: list[ir.Value], name: str) -> ir.Value:
        new.append(ir.Node("", op_type, inputs, outputs=[ir.Value(name=name)]))
        return new[-1].outputs[0]

    flat = constant(np.array([-1], np.int64), f"{prefix}_flat")
    mean = reduce(x, f"{prefix}_mean4")
    square = reduce(op("Mul", [x, x], f"{prefix}_xx"), f"{prefix}_sq4")
    centered = op("Sub", [x, mean], f"{prefix}_centered")
    var = reduce(op("Mul", [centered, centered], f"{prefix}_cc"), f"{prefix}_var4")
    mean_flat = op("Reshape", [mean, flat], f"{prefix}_mean")
    square_flat = op("Reshape", [square, flat], f"{prefix}_sq")
    var_flat = op("Reshape", [var, flat], f"{prefix}_var")
    work.graph.insert_before(node, new)
    node.replace_input_with(3, mean_flat)
    node.replace_input_with(4, var_flat)
    work.graph.outputs.extend([mean_flat, square_flat])
    return str(mean_flat.name), str(square_flat.name)


def reestimate_batchnorm(
    model: ir.Model, calibration: str | Iterable[Feeds], *, samples: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Replace the running mean/var of ``model``'s BatchNorms by their input statistics on the
    calibration data (every BN normalized by batch statistics on the way); returns how many."""
    indices = batchnorms(model)
    if not indices:
        return 0
    work = model.clone()
    opset = work.opset_imports.get("", work.opset_imports.get("ai.onnx", 18))
    work_nodes, nodes = list(work.graph), list(model.graph)
    names = [_add_batch_stats(work, work_nodes[i], opset) for i in indices]
    flat = [n for pair in names for n in pair]
    sums = {n: np.zeros(0) for n in flat}
    seen = 0
    first_input = str(model.graph.inputs[0].name)
    for batch in stream_outputs(work, flat, calibration, model=model, samples=samples):
        count = len(batch[first_input])
        for name in flat:
            value = np.asarray(batch[name], dtype=np.float64) * count
            sums[name] = value if not sums[name].size else sums[name] + value
        seen += count
        if on_batch is not None:
            on_batch(seen)
    for index, (mean_name, square_name) in zip(indices, names, strict=True):
        node = nodes[index]
        mean = sums[mean_name] / max(seen, 1)
        var = np.maximum(sums[square_name] / max(seen, 1) - mean ** 2, 0.0)
        for slot, stat in ((3, mean), (4, var)):
            target = node.inputs[slot]
            old = _const(target)
            assert target is not None and old is not None
            write_constant(target, stat.astype(old.dtype).reshape(old.shape))
    logger.info("bn-reestimate: %d BatchNorm(s) re-estimated on %d sample(s)", len(indices), seen)
    return len(indices)
