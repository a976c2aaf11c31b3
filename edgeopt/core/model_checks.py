"""Check that a loaded model can be worked on: opsets and domains ONNX Runtime knows, finite weights.

:func:`edgeopt.core.model_io.load_model` already refuses what no verb can read.
The verbs that run or transform a model call :func:`check_model` first, so that a
model ONNX Runtime cannot load, or whose weights hold NaN or infinity, fails in
one line before any work (or any output file). ``inspect`` lists the same
findings with :func:`model_problems` instead of failing.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.core.errors import EdgeoptError, NonFiniteWeightsError, UnsupportedOpError, UnsupportedOpsetError
from edgeopt.core.model_io import SOURCE_PATH_KEY

logger = logging.getLogger(__name__)

KNOWN_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview", "ai.onnx.preview.training",
                           "com.microsoft", "com.microsoft.nchwc", "com.ms.internal.nhwc"})
"""Operator domains that ONNX and ONNX Runtime define."""

WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "Einsum", "PRelu", "LSTM", "GRU",
                          "RNN", "BatchNormalization", "LayerNormalization", "InstanceNormalization",
                          "GroupNormalization"})
"""Ops whose constant float inputs are weights: NaN or infinity there means a broken model. (An additive
attention mask of ``-inf`` is a constant too, but it feeds ``Add``, so it is not checked.)"""


@dataclass(frozen=True)
class Problem:
    """One thing that keeps the verbs from working on a model, with the error to raise for it."""

    error: type[EdgeoptError]
    message: str


def check_model(model: ir.Model, *, opsets: bool = True, weights: bool = True) -> None:
    """Raise the first of :func:`model_problems` (one line that says what to do), if any.

    Args:
        model: A loaded model.
        opsets: Check the IR version and opsets (off where the verb converts the opset).
        weights: Check that the weights are finite.

    Raises:
        UnsupportedOpsetError: ONNX Runtime cannot load the model's IR version or an opset.
        UnsupportedOpError: a node's domain is neither standard nor a model-local function's.
        NonFiniteWeightsError: a weight holds NaN or infinity (with ``weights``).
    """
    problems = model_problems(model, opsets=opsets, weights=weights)
    if problems:
        more = f" ({len(problems) - 1} more problem(s) after this one)" if len(problems) > 1 else ""
        raise problems[0].error(problems[0].message + more)


def model_problems(model: ir.Model, *, opsets: bool = True, weights: bool = True) -> list[Problem]:
    """What keeps ONNX Runtime from loading ``model`` (IR, opsets, domains) and its non-finite weights."""
    where = model.meta.get(SOURCE_PATH_KEY, "model")
    problems = _opset_problems(model, where) if opsets else []
    problems += _domain_problems(model, where)
    return problems + (_weight_problems(model, where) if weights else [])


def _opset_problems(model: ir.Model, where: str) -> list[Problem]:
    known = {d: v for d, v in model.opset_imports.items() if d in KNOWN_DOMAINS}
    if _ort_rejects(model.ir_version, tuple(sorted(known.items()))) is None:
        return []
    if _ort_rejects(model.ir_version, (("", 17),)) is not None:
        return [Problem(UnsupportedOpsetError,
                        f"{where}: ONNX Runtime cannot load IR version {model.ir_version}. "
                        "Re-export the model with a released exporter.")]
    problems = []
    newest = onnx.defs.onnx_opset_version()
    for domain, version in sorted(known.items()):
        if _ort_rejects(model.ir_version, ((domain, version),)) is None:
            continue
        name = domain or "ai.onnx"
        hint = (f"Re-export the model at a released opset (onnx {onnx.__version__} knows up to {newest})"
                if version > newest or domain not in ("", "ai.onnx")
                else "Convert it: edgeopt convert-opset MODEL -o OUT --to 17")
        problems.append(Problem(UnsupportedOpsetError,
                                f"{where}: ONNX Runtime cannot load opset {version} of domain '{name}'. {hint}."))
    return problems


@functools.cache
def _ort_rejects(ir_version: int, opsets: tuple[tuple[str, int], ...]) -> str | None:
    """ONNX Runtime's complaint about a one-node model with this IR version and these opsets, or None."""
    import onnxruntime as ort

    graph = onnx.helper.make_graph(
        [], "probe", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets])
    proto.ir_version = ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own classes; the reason is all we need
        logger.debug("ONNX Runtime rejects IR %s with opsets %s: %s", ir_version, opsets, e)
        return str(e)
    return None


def _domain_problems(model: ir.Model, where: str) -> list[Problem]:
    local = {function.domain for function in model.functions.values()}
    unknown = [node for node in _all_nodes(model) if node.domain not in KNOWN_DOMAINS | local]
    if not unknown:
        return []
    listed = ", ".join(f"'{n.name}' ({n.domain}::{n.op_type})" for n in unknown[:3])
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    return [Problem(UnsupportedOpError,
                    f"{where}: node(s) {listed}{more} use a domain neither ONNX Runtime nor the model's functions "
                    "define. Replace them with standard ONNX ops (or re-export without custom ops).")]


def _weight_problems(model: ir.Model, where: str) -> list[Problem]:
    problems = []
    seen: set[int] = set()
    for node in _all_nodes(model):
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        for value in node.inputs:
            if value is not None and id(value) not in seen:
                seen.add(id(value))
                problems += _non_finite(value, node, where)
    return problems


def _non_finite(value: ir.Value, node: ir.Node, where: str) -> list[Problem]:
    tensor = _constant(value)
    if tensor is None or not tensor.dtype.is_floating_point():
        return []
    array = tensor.numpy()
    bad = {"NaN": int(np.isnan(array).sum()), "Inf": int(np.isinf(array).sum())}
    if not any(bad.values()):
        return []
    counts = " and ".join(f"{count} {kind}" for kind, count in bad.items() if count)
    return [Problem(NonFiniteWeightsError,
                    f"{where}: weight '{value.name}' of {node.op_type} node '{node.name or '?'}' holds {counts} "
                    f"value(s) of {array.size}. The model is broken (diverged training or a bad export); "
                    "re-export it from a checkpoint with finite weights.")]


def _constant(value: ir.Value) -> ir.TensorProtocol | None:
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor()
    return None


def _all_nodes(model: ir.Model) -> list[ir.Node]:
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    return [node for graph in graphs for node in ir.traversal.RecursiveGraphIterator(graph)]
