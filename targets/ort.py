"""ONNX Runtime on CPU: the reference target, and the one every other is compared with."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import ClassVar

import onnx
import onnx_ir as ir

from edgeopt.core.model_io import save_model
from edgeopt.core.runtime import Feeds, create_session, run_session
from edgeopt.core.target import CalibrationReader, Issue, Signature, TensorSpec, raise_for_issues

logger = logging.getLogger(__name__)

_ORT_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc",
                "ai.onnx.preview.training", "com.ms.internal.nhwc"}


NOTES_KEY = "edgeopt.notes"
"""Metadata key of an artifact's notes (a JSON list of strings), read back by ``notes()``."""


class OrtCpuTarget:
    """ONNX Runtime, CPU execution provider, fp32 (int8 artifacts come with quantization).

    The base of the other ONNX Runtime targets (``ort-cpu-int8``, ``ort-gpu``,
    ``ort-npu``): they share the signature, running and notes; each writes its own
    artifact.

    Args:
        ort_format: Also write ``model.ort`` beside ``model.onnx``, the ORT-format
            model that ONNX Runtime Mobile loads (see :func:`to_ort_format`).
    """

    name: ClassVar[str] = "ort-cpu"
    description: ClassVar[str] = "ONNX Runtime on CPU (fp32 ONNX model)"
    runtime: ClassVar[str] = "onnxruntime"
    device: ClassVar[str] = "cpu"
    precision: ClassVar[str] = "fp32"
    needs_calibration: ClassVar[bool] = False
    artifact_name: ClassVar[str] = "model.onnx"

    def __init__(self, *, ort_format: bool = False) -> None:
        self.ort_format = ort_format

    def check(self, model: ir.Model) -> list[Issue]:
        """Nodes with no ORT CPU kernel (or function body) at the model's opset."""
        kernels = _cpu_kernels()
        issues = []
        for index, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph)):
            domain = "" if node.domain == "ai.onnx" else node.domain
            if (node.domain, node.op_type, node.overload) in model.functions:
                continue
            version = model.opset_imports.get(node.domain, model.opset_imports.get(domain))
            problem = _kernel_problem(kernels, domain, node.op_type, version)
            if problem:
                issues.append(Issue(node.name or f"#{index}", _qualified(domain, node.op_type),
                                    *problem))
        return issues

    def prepare(self) -> ir.passes.PassBase:
        from edgeopt.pipeline.runner import cleanup

        return cleanup()

    def export(
        self, model: ir.Model, out_dir: Path, *, calibration: CalibrationReader | None = None
    ) -> Path:
        """Check, then write ``out_dir/model.onnx`` (``calibration`` is unused for fp32)."""
        del calibration
        raise_for_issues(self.name, self.check(model))
        return self.save(model, out_dir, [])

    def save(self, model: ir.Model, out_dir: Path, notes: list[str]) -> Path:
        """Write the artifact (atomically) with ``notes`` in its metadata, and ``model.ort``
        beside it when ``ort_format`` is set."""
        if notes:
            model.metadata_props[NOTES_KEY] = json.dumps(notes)
        else:
            model.metadata_props.pop(NOTES_KEY, None)
        artifact = save_model(model, Path(out_dir) / self.artifact_name)
        if self.ort_format:
            from edgeopt.targets.ort_format import to_ort_format

            to_ort_format(artifact)
        return artifact

    def notes(self, artifact: Path) -> list[str]:
        """What export measured or decided (kept in the artifact's metadata)."""
        model = onnx.load(str(artifact), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        return list(json.loads(props[NOTES_KEY])) if NOTES_KEY in props else []

    def signature(self, artifact: Path) -> Signature:
        return ort_signature(artifact)

    def encode_inputs(self, artifact: Path, feeds: Feeds) -> Feeds:
        del artifact
        return dict(feeds)  # an ONNX artifact takes the model's own feeds

    def run_native(self, artifact: Path, feeds: Feeds) -> Feeds:
        """Run with ORT's default graph optimizations, as it would be deployed."""
        return run_session(create_session(artifact, optimize=True), feeds)

    def decode_outputs(self, artifact: Path, outputs: Feeds) -> Feeds:
        del artifact
        return dict(outputs)

    def run(self, artifact: Path, feeds: Feeds) -> Feeds:
        return self.decode_outputs(artifact, self.run_native(artifact, self.encode_inputs(artifact, feeds)))


def ort_signature(artifact: Path) -> Signature:
    """Inputs and outputs of an ONNX artifact (names, shapes with dynamic dims as str, dtypes)."""
    model = onnx.load(str(artifact), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in tensor.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name if tensor.elem_type else "?"
        layout = "NCHW" if len(dims) == 4 else None
        return TensorSpec(value.name, value.name, dims, dtype, layout)

    return Signature(
        tuple(spec(v) for v in model.graph.input if v.name not in initializers),
        tuple(spec(v) for v in model.graph.output),
    )


@functools.cache
def _cpu_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    from onnxruntime.capi import _pybind_state

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for kernel in _pybind_state.get_all_opkernel_def():
        if kernel.provider == "CPUExecutionProvider":
            domain = "" if kernel.domain == "ai.onnx" else kernel.domain
            kernels.setdefault((domain, kernel.op_name), []).append(tuple(kernel.version_range))
    return kernels


def _kernel_problem(
    kernels: dict[tuple[str, str], list[tuple[int, int]]], domain: str, op: str, version: int | None
) -> tuple[str, str] | None:
    if domain not in _ORT_DOMAINS:
        return (f"domain '{domain}' is not known to ONNX Runtime",
                "Register a custom-op library with ORT, or replace the op with standard ONNX ops.")
    if version is None:
        return (f"the model imports no opset for domain '{domain or 'ai.onnx'}'",
                "Add the opset import.")
    if domain == "" and op == "Constant":
        return None  # ORT turns Constant nodes into initializers when it loads a model
    ranges = kernels.get((domain, op))
    if ranges and any(lo <= version <= hi for lo, hi in ranges):
        return None
    if _has_function_body(domain, op, version):
        return None  # ORT expands ops defined as ONNX functions
    if not ranges:
        return (f"ONNX Runtime has no CPU kernel for {_qualified(domain, op)}",
                "Replace the op, or keep this part of the model on another runtime.")
    supported = ", ".join(f"{lo}-{hi}" for lo, hi in sorted(set(ranges)))
    return (f"no CPU kernel at opset {version} (kernels cover opsets {supported})",
            "Convert the opset: edgeopt convert-opset MODEL -o OUT --to 17")


def _has_function_body(domain: str, op: str, version: int) -> bool:
    try:
        schema = onnx.defs.get_schema(op, version, domain)
    except onnx.defs.SchemaError:
        return False
    return bool(getattr(schema, "has_function", False)
                or getattr(schema, "has_context_dependent_function", False))


def _qualified(domain: str, op: str) -> str:
    return f"{domain}::{op}" if domain else op
