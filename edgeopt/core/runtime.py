"""Run models in ONNX Runtime and compare their outputs.

Used by pipeline verification, export checks, targets and tests alike, so there
is one way to build a session, make sample inputs and measure a deviation.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.model_io import PROTOBUF_LIMIT_BYTES, save_model, tensor_bytes

Feeds = dict[str, np.ndarray]
"""Input or output name -> array."""

CalibrationReader = Iterable[Feeds]
"""Any re-iterable of feeds (a list works); each iteration starts over."""


PRECISE_INT8_KEY = "session.x64quantprecision"
"""ORT session option: on x86 without VNNI, convert int8 weights to uint8 at load time so that the
u8 x s8 kernels cannot saturate (:mod:`edgeopt.core.cpu`); no effect elsewhere."""


def create_session(
    model: ir.Model | onnx.ModelProto | str | os.PathLike[str],
    *,
    optimize: bool = False,
    providers: list[str] | None = None,
    config: Mapping[str, str] | None = None,
    low_memory: bool = False,
) -> ort.InferenceSession:
    """Create an ONNX Runtime session.

    Args:
        model: An IR model, a ``ModelProto`` or a path to an ONNX file.
        optimize: Apply ORT's graph optimizations. Off by default, so that ORT
            cannot hide a bad rewrite when comparing models.
        providers: Execution providers; CPU by default.
        config: Session config entries, e.g. ``{PRECISE_INT8_KEY: "1"}``.
        low_memory: For analysis graphs run on large batches: no CPU memory arena
            (an arena keeps its largest run's memory for the session's life), and
            nodes run in graph order as soon as their inputs are ready
            (``PRIORITY_BASED``), so that analysis nodes placed right after the
            tensors they read run before the next layer instead of at the end,
            which would keep every activation they read alive until then.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if low_memory:
        options.enable_cpu_mem_arena = False
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    providers = providers or ["CPUExecutionProvider"]
    if isinstance(model, str | os.PathLike):
        return ort.InferenceSession(os.fspath(model), options, providers=providers)
    if isinstance(model, ir.Model):
        # Tensors still in an external file can't be resolved from serialized bytes.
        if _has_external_tensors(model) or tensor_bytes(model) > PROTOBUF_LIMIT_BYTES // 2:
            with tempfile.TemporaryDirectory() as tmp:
                path = save_model(model.clone(), Path(tmp) / "model.onnx", external_data=True)
                return ort.InferenceSession(os.fspath(path), options, providers=providers)
        model = ir.serde.serialize_model(model)
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def _has_external_tensors(model: ir.Model) -> bool:
    if any(isinstance(value.const_value, ir.ExternalTensor)
           for graph in model.graphs() for value in graph.initializers.values()):
        return True
    nodes = [*ir.traversal.RecursiveGraphIterator(model.graph),
             *(n for f in model.functions.values() for n in ir.traversal.RecursiveGraphIterator(f))]
    return any(attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor)
               for node in nodes for attr in node.attributes.values())


def run_session(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Run ``session`` and return its outputs by name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def run_model(model: ir.Model | onnx.ModelProto | str, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Run ``model`` once in ONNX Runtime with graph optimizations off."""
    return run_session(create_session(model), feeds)


def model_inputs(model: ir.Model) -> list[ir.Value]:
    """Graph inputs that need a feed (IR < 4 initializers listed as inputs excluded)."""
    return [v for v in model.graph.inputs if not v.is_initializer()]


def random_feeds(
    model: ir.Model,
    *,
    seed: int = 0,
    dims: Mapping[str, int] | None = None,
    default_dim: int = 1,
) -> Feeds:
    """Random inputs for every graph input of ``model``, valid for what the model does with them.

    Symbolic dimensions take their value from ``dims`` (by name), else ``default_dim``.
    Floats are standard normal; booleans are fair coins. Integers that index a
    constant table through ``Gather`` (directly or through Cast, Reshape and the
    like: token ids into an embedding) lie in ``[0, rows)``, other integers in
    ``[0, 4)``. Inputs named like a mask (``attention_mask``) are ones, and
    ``token_type_ids`` / ``segment_ids`` zeros, as in a single-segment text.
    """
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds: Feeds = {}
    for value in model_inputs(model):
        if not isinstance(value.type, ir.TensorType) or value.dtype is None:
            raise CalibrationDataError(
                f"input '{value.name}' has type {value.type}; random inputs are only made for "
                "tensors. Provide sample data instead."
            )
        shape = [
            d if isinstance(d, int) else dims.get(str(d.value), default_dim)
            for d in (value.shape.dims if value.shape is not None else ())
        ]
        np_dtype = value.dtype.numpy()
        name = (value.name or "").lower()
        if "mask" in name or name in _SEGMENT_NAMES:
            array = np.full(shape, "mask" in name, dtype=np_dtype)
        elif value.dtype == ir.DataType.BOOL:
            array = rng.integers(0, 2, size=shape).astype(bool)
        elif value.dtype.is_floating_point():
            array = rng.standard_normal(size=shape).astype(np_dtype)
        elif value.dtype.is_integer():
            array = rng.integers(0, _index_bound(value) or 4, size=shape).astype(np_dtype)
        else:
            raise CalibrationDataError(
                f"input '{value.name}' has dtype {value.dtype}; no random data for it. "
                "Provide sample data instead."
            )
        feeds[value.name or ""] = array
    return feeds


_SEGMENT_NAMES = frozenset({"token_type_ids", "segment_ids"})
_INDEX_PASSTHROUGH = frozenset({"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand"})


def _index_bound(value: ir.Value) -> int | None:
    """Rows of the smallest constant table ``value`` indexes with ``Gather``, following shape-only ops."""
    bounds: list[int] = []
    pending, seen = [value], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Gather" and index == 1:
                rows = _static_rows(node.inputs[0], node.attributes.get_int("axis", 0))
                bounds += [rows] if rows else []
            elif node.op_type in _INDEX_PASSTHROUGH and index == 0:
                pending.extend(node.outputs)
    return min(bounds) if bounds else None


def _static_rows(table: ir.Value | None, axis: int) -> int | None:
    producer = table.producer() if table is not None else None
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        shape: Any = producer.attributes["value"].as_tensor().shape
    else:
        shape = table.shape if table is not None else None
    if shape is None or not -len(shape) <= axis < len(shape):
        return None
    rows = shape[axis]
    return rows if isinstance(rows, int) and rows > 0 else None


@dataclass(frozen=True)
class Deviation:
    """How far one set of outputs is from a reference.

    ``max_rel`` is ``max(|a - r| / (|r| + atol))``: relative, guarded near zero.
    ``mismatches`` names outputs that differ in name, dtype or shape, or beyond tolerance.
    """

    max_abs: float
    max_rel: float
    worst_output: str | None
    mismatches: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def compare_outputs(
    reference: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> Deviation:
    """Compare ``actual`` with ``reference`` output by output (NaNs equal to NaNs).

    Outputs may be arrays or what ORT returns for sequences (lists), maps (dicts)
    and absent optionals (None); their structure must match, then every array in
    them is compared.
    """
    ref_leaves: dict[str, np.ndarray] = {}
    got_leaves: dict[str, np.ndarray] = {}
    mismatches: list[str] = []
    for name, value in reference.items():
        if name not in actual:
            mismatches.append(f"{name}: missing")
            continue
        expected = _flatten(name, value, ref_leaves)
        structure = _flatten(name, actual[name], got_leaves)
        if expected != structure:
            mismatches.append(f"{name}: {structure} != {expected}")
    mismatches.extend(f"{name}: unexpected output" for name in actual if name not in reference)
    max_abs = max_rel = 0.0
    worst: str | None = None
    for name, ref in ref_leaves.items():
        if name not in got_leaves:
            continue
        got = got_leaves[name]
        if ref.dtype != got.dtype or ref.shape != got.shape:
            mismatches.append(f"{name}: {got.dtype}{list(got.shape)} != {ref.dtype}{list(ref.shape)}")
            continue
        abs_err, rel_err, close = _elementwise_error(ref, got, rtol, atol)
        if abs_err > max_abs or worst is None:
            max_abs, worst = max(max_abs, abs_err), name
        max_rel = max(max_rel, rel_err)
        if not close:
            mismatches.append(f"{name}: max abs error {abs_err:.3g} (rel {rel_err:.3g})")
    return Deviation(max_abs, max_rel, worst, tuple(mismatches))


def _flatten(name: str, value: Any, leaves: dict[str, np.ndarray]) -> str:
    """Put ``value``'s arrays in ``leaves`` under paths like ``out[2]``; return its structure."""
    if value is None:
        return "None"
    if isinstance(value, list | tuple):
        inner = [_flatten(f"{name}[{i}]", item, leaves) for i, item in enumerate(value)]
        return f"seq[{', '.join(inner)}]"
    if isinstance(value, dict):
        inner = [f"{key!r}: {_flatten(f'{name}[{key!r}]', value[key], leaves)}" for key in sorted(value)]
        return f"map{{{', '.join(inner)}}}"
    leaves[name] = np.asarray(value)
    return "tensor"


def _elementwise_error(
    ref: np.ndarray, got: np.ndarray, rtol: float, atol: float
) -> tuple[float, float, bool]:
    if ref.size == 0:
        return 0.0, 0.0, True
    if ref.dtype.kind not in "fciub":  # strings, objects
        same = bool(np.array_equal(ref, got))
        return (0.0 if same else math.inf), (0.0 if same else math.inf), same
    if ref.dtype.kind == "b":
        ref, got = ref.astype(np.int8), got.astype(np.int8)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(r) & np.isnan(g)
    same_inf = np.isinf(r) & (r == g)
    with np.errstate(invalid="ignore"):  # inf - inf is masked right here
        diff = np.where(both_nan | same_inf, 0.0, np.abs(r - g))
    diff = np.where(np.isnan(diff), np.inf, diff)
    scale = np.abs(np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0))  # NaN/inf: no slack
    close = bool(np.all(diff <= atol + rtol * scale))
    denominator = scale + atol
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(denominator > 0, diff / np.where(denominator > 0, denominator, 1.0),
                       np.where(diff > 0, np.inf, 0.0))
    return float(diff.max()), float(rel.max()), close
