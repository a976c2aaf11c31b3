"""ONNX Runtime on GPU: float16 weights and activations, float32 inputs and outputs.

The graph is converted by the ``convert-fp16`` pass (ORT's converter, with a block
list of numerically fragile ops kept in float32; see ``passes/convert_fp16.py``),
then checked against the float32 model before it is written: outputs must be
finite and the deviation is recorded in the artifact's notes.

Where no CUDA execution provider is installed (this project's machines), the
artifact runs and is verified on the CPU execution provider. ORT's CPU EP has
float16 kernels for only some ops (Max, Min, Clip, Concat, Reshape, ...); for
the others it inserts Casts and computes in float32, and drops the float16
round trip between two such ops. So a CPU check sees float16 weights and the
float16 rounding (and overflow) of tensors that pass through a float16 kernel
or the graph I/O, but not float16 arithmetic, nor the rounding inside a chain
of emulated ops; a GPU can differ there. The notes name the emulated ops.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import ExportError
from edgeopt.core.runtime import Feeds, create_session, random_feeds, run_session
from edgeopt.core.target import CalibrationReader, raise_for_issues
from edgeopt.targets.ort import OrtCpuTarget

logger = logging.getLogger(__name__)


class OrtGpuTarget(OrtCpuTarget):
    """ONNX Runtime on GPU (CUDA EP), float16 with float32 I/O, verified against float32.

    Args:
        op_block_list: Op types kept in float32 (default: ``convert-fp16``'s fragile ops).
        ort_format: Also write ``model.ort`` for ORT Mobile.
    """

    name: ClassVar[str] = "ort-gpu"
    description: ClassVar[str] = "ONNX Runtime on GPU (CUDA EP), fp16 weights/activations, fp32 I/O"
    device: ClassVar[str] = "gpu"
    precision: ClassVar[str] = "fp16"
    needs_calibration: ClassVar[bool] = False

    def __init__(self, *, op_block_list: tuple[str, ...] | None = None, ort_format: bool = False) -> None:
        super().__init__(ort_format=ort_format)
        self.op_block_list = op_block_list

    def export(
        self, model: ir.Model, out_dir: Path, *, calibration: CalibrationReader | None = None
    ) -> Path:
        """Convert to float16, verify against float32, write ``out_dir/model.onnx``.

        ``calibration`` (optional) supplies the verification inputs; random ones otherwise.

        Raises:
            ExportError: the float16 model gives non-finite outputs where float32 does not.
        """
        from edgeopt.passes.convert_fp16 import FRAGILE_OPS, ConvertFloat16Pass

        raise_for_issues(self.name, self.check(model))
        converted = model.clone()
        blocked = FRAGILE_OPS if self.op_block_list is None else self.op_block_list
        ConvertFloat16Pass(op_block_list=tuple(blocked))(converted)
        feeds = _verification_feeds(model, calibration)
        notes = self._verify(model, converted, feeds)
        return self.save(converted, out_dir, notes)

    def _verify(self, reference: ir.Model, converted: ir.Model, feeds: Feeds) -> list[str]:
        expected = run_session(create_session(reference), feeds)
        got = run_session(create_session(converted, providers=providers()), feeds)
        worst, cosine = 0.0, 1.0
        for name, ref in expected.items():
            ref64, got64 = np.asarray(ref, np.float64), np.asarray(got[name], np.float64)
            if np.isfinite(ref64).all() and not np.isfinite(got64).all():
                raise ExportError(f"ort-gpu: output '{name}' overflows in float16 (inf/NaN where float32 is "
                                  "finite). Keep the op that overflows in float32: add it to op_block_list.")
            worst = max(worst, float(np.abs(ref64 - got64).max()) if ref64.size else 0.0)
            denominator = float(np.linalg.norm(ref64) * np.linalg.norm(got64))
            if denominator > 0:
                cosine = min(cosine, float((ref64 * got64).sum()) / denominator)
        where = "CUDA EP" if "CUDAExecutionProvider" in providers() else "CPU EP (no CUDA EP here)"
        notes = [f"fp16 vs fp32 on {where}: max abs error {worst:.3g}, cosine {cosine:.6f}"]
        if where.startswith("CPU"):
            emulated = sorted({n.op_type for n in converted.graph if _computes_fp16(n)
                               and ("", n.op_type) not in cpu_fp16_ops()})
            if emulated:
                notes.append("on the CPU EP these fp16 ops computed in fp32 (no CPU fp16 kernel; a GPU may "
                             f"differ): {', '.join(emulated)}")
        logger.info("ort-gpu: %s", "; ".join(notes))
        return notes

    def run_native(self, artifact: Path, feeds: Feeds) -> Feeds:
        """Run on the CUDA EP where installed, else on the CPU EP (see the module docstring)."""
        return run_session(create_session(artifact, optimize=True, providers=providers()), feeds)


def providers() -> list[str]:
    """CUDA first where this onnxruntime build has it, CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


@functools.cache
def cpu_fp16_ops() -> frozenset[tuple[str, str]]:
    """(domain, op) pairs that have a float16 kernel on ORT's CPU EP in this build."""
    from onnxruntime.capi import _pybind_state

    return frozenset(
        ("" if k.domain == "ai.onnx" else k.domain, k.op_name) for k in _pybind_state.get_all_opkernel_def()
        if k.provider == "CPUExecutionProvider"
        and any("tensor(float16)" in types for types in k.type_constraints.values())
    )


def _computes_fp16(node: ir.Node) -> bool:
    return node.op_type != "Cast" and any(o.dtype == ir.DataType.FLOAT16 for o in node.outputs)


def _verification_feeds(model: ir.Model, calibration: CalibrationReader | None) -> Feeds:
    if calibration is None:
        return random_feeds(model, default_dim=2)
    from edgeopt.data.readers import batches

    return next(iter(batches(calibration, model, limit=64)))
