"""Summarize a model: opsets, signature, op histogram, parameters, weight bytes, MACs."""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgeopt.core.model_io import SOURCE_PATH_KEY
from edgeopt.core.shapes import infer_shapes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: list[int | str | None] | None


@dataclass(frozen=True)
class ModelSummary:
    """What ``edgeopt inspect`` reports; ``as_dict()`` is its JSON form."""

    path: str | None
    file_bytes: int | None
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    ops: dict[str, int]
    nodes: int
    parameters: int
    weight_bytes: dict[str, int]
    macs: int
    """Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul whose shapes are known, at
    ``macs_dims``."""
    macs_unknown: list[str] = field(default_factory=list)
    """Nodes counted out of ``macs`` because their shapes are not known."""
    macs_dims: dict[str, int] = field(default_factory=dict)
    """The value each symbolic input dimension took for ``macs`` (those not given: 1)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(model: ir.Model, dims: Mapping[str, int] | None = None) -> ModelSummary:
    """Summarize ``model`` (unchanged; shapes are inferred on a copy for the MACs).

    Args:
        model: The model.
        dims: Values of symbolic input dimensions for the MACs (e.g. from :func:`sample_dims`);
            any other symbolic dimension counts as 1.
    """
    path = model.meta.get(SOURCE_PATH_KEY)
    ops: Counter[str] = Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        ops[f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type] += 1
    parameters, weight_bytes = _weights(model)
    macs, unknown = _macs(model, dims or {})
    return ModelSummary(
        path=path,
        file_bytes=_file_bytes(model, Path(path)) if path else None,
        ir_version=model.ir_version,
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        opsets={domain or "ai.onnx": v for domain, v in sorted(model.opset_imports.items())},
        inputs=[_info(v) for v in model.graph.inputs if not v.is_initializer()],
        outputs=[_info(v) for v in model.graph.outputs],
        ops=dict(ops.most_common()),
        nodes=sum(ops.values()),
        parameters=parameters,
        weight_bytes=weight_bytes,
        macs=macs,
        macs_unknown=unknown,
        macs_dims=_bound_dims(model, dims or {}),
    )


def sample_dims(model: ir.Model, feeds: Mapping[str, object]) -> dict[str, int]:
    """The symbolic input dimensions of ``model`` as one sample of ``feeds`` has them: axis 0 (the batch,
    along which feeds stack samples) counts 1, the others (sequence length, image size) as in the data."""
    found: dict[str, int] = {}
    for value in model.graph.inputs:
        array = feeds.get(value.name or "")
        shape = getattr(array, "shape", None)
        if value.shape is None or shape is None or len(shape) != len(value.shape):
            continue
        for axis, dim in enumerate(value.shape):
            if not isinstance(dim, int) and dim.value is not None:
                found.setdefault(dim.value, 1 if axis == 0 else int(shape[axis]))
    return found


def _bound_dims(model: ir.Model, dims: Mapping[str, int]) -> dict[str, int]:
    return {d.value: dims.get(d.value, 1) for v in model.graph.inputs if v.shape is not None
            for d in v.shape if not isinstance(d, int) and d.value is not None}


def _file_bytes(model: ir.Model, path: Path) -> int:
    """The model file plus every external-data file its tensors refer to (each once)."""
    data_files = {
        Path(tensor.base_dir, tensor.location).resolve()
        for graph in model.graphs()
        for value in graph.initializers.values()
        if isinstance(tensor := value.const_value, ir.ExternalTensor)
    }
    return path.stat().st_size + sum(f.stat().st_size for f in data_files if f.is_file())


def _info(value: ir.Value) -> TensorInfo:
    shape: list[int | str | None] | None = None
    if value.shape is not None:
        shape = [d if isinstance(d, int) else d.value for d in value.shape]
    dtype = value.dtype.name.lower() if value.dtype is not None else str(value.type)
    return TensorInfo(value.name or "", dtype, shape)


def _weights(model: ir.Model) -> tuple[int, dict[str, int]]:
    count = 0
    by_dtype: Counter[str] = Counter()
    # Every initializer counts: before IR 4 they were all listed as graph inputs too.
    tensors = [v.const_value for g in model.graphs() for v in g.initializers.values()
               if v.const_value is not None]
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and "value" in node.attributes:
            tensors.append(node.attributes["value"].as_tensor())
    for tensor in tensors:
        count += math.prod(tensor.shape.numpy())
        by_dtype[tensor.dtype.name.lower()] += tensor.nbytes
    return count, dict(by_dtype.most_common())


def _macs(model: ir.Model, dims: Mapping[str, int]) -> tuple[int, list[str]]:
    per_node = node_macs(model, dims)
    unknown = [name for name, macs in per_node.items() if macs is None]
    return sum(m for m in per_node.values() if m is not None), unknown


def node_macs(model: ir.Model, dims: Mapping[str, int] | None = None) -> dict[str, int | None]:
    """MACs of each Conv/ConvTranspose/Gemm/MatMul with symbolic input dimensions at ``dims`` (1 where not
    given), by node name (``<op type>#<index>`` where unnamed); None where shapes are not known."""
    dims = dims or {}
    shaped = model.clone()
    for value in shaped.graph.inputs:
        if value.shape is not None and not value.shape.is_static():
            value.shape = ir.Shape([d if isinstance(d, int) else dims.get(d.value or "", 1) for d in value.shape])
    infer_shapes(shaped)
    nodes = {node.name or f"{node.op_type}#{index}": node
             for index, node in enumerate(ir.traversal.RecursiveGraphIterator(shaped.graph))
             if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")}
    found = {name: _node_macs(node) for name, node in nodes.items()}
    if any(macs is None for macs in found.values()):
        _fold_shape_arithmetic(shaped)  # the same node objects, now with more shapes known
        found = {name: macs if macs is not None else _node_macs(nodes[name]) for name, macs in found.items()}
    return found


def _fold_shape_arithmetic(model: ir.Model) -> None:
    """Evaluate shape arithmetic (a raw export's computed pads) so that shapes after it are known.

    Only for counting: ``model`` is a copy; the Conv/Gemm/MatMul nodes stay the same objects.
    """
    from onnxscript.optimizer import fold_constants  # lazy: inspect starts without onnxscript

    try:
        fold_constants(model, onnx_shape_inference=True,
                       should_fold=lambda node: True if node.op_type == "ConstantOfShape" else None)
    except Exception as e:  # noqa: BLE001 - counting is best effort; unknown stays unknown
        logger.debug("inspect: folding shape arithmetic failed (%s)", e)
        return
    infer_shapes(model)


def _static(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    return [int(d) for d in value.shape]  # type: ignore[arg-type]


def _node_macs(node: ir.Node) -> int | None:
    inputs = [_static(v) for v in node.inputs[:2]]
    out = _static(node.outputs[0])
    if any(s is None for s in inputs) or out is None:
        return None
    a, b = inputs
    assert a is not None and b is not None
    if node.op_type == "Conv":
        return math.prod(out) * math.prod(b[1:])  # each output: C_in/group * kernel
    if node.op_type == "ConvTranspose":
        return math.prod(a) * math.prod(b[1:])  # each input scatters into C_out/group * kernel
    if node.op_type == "Gemm":
        k = a[0] if node.attributes.get_int("transA", 0) else a[-1]
        return math.prod(out) * k
    return math.prod(out) * (a[-1] if a else 1)  # MatMul


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of an ONNX file plus the external data it refers to."""
    from edgeopt.core.model_io import load_model

    return _file_bytes(load_model(path), Path(path))
