"""Does the host's int8 arithmetic compute what the artifact means? A second, reference run.

Validation scores an artifact on the runtime's optimized kernels, as deployed. An
int8 artifact is also run on a reference path of the same runtime, on the same
inputs, and the two are compared:

- ONNX Runtime, QDQ graph: the QDQ simulation (graph optimizations off: Q/DQ as
  float ops, so no integer kernel is involved);
- ONNX Runtime, graph with integer ops (dynamic int8, QOperator): ORT's precise
  int8 kernels (``session.x64quantprecision``: no int16 pair sums on x86);
- LiteRT: the interpreter's reference kernels (``BUILTIN_REF``, no XNNPACK).

A gap of more than :data:`GAP_DB` in SQNR against fp32, or top-1 disagreement
between the two runs on more than :data:`MAX_DISAGREEMENT` of the samples, is
kernel saturation (or another kernel defect) on this CPU, reported with its fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.core.cpu import detect_host_cpu
from edgeopt.core.runtime import PRECISE_INT8_KEY, Feeds, create_session, run_session
from edgeopt.core.scoring import Scorer, Scores
from edgeopt.core.target import Target
from edgeopt.deploy import bundle_runner
from edgeopt.deploy.manifest import ArtifactEntry

GAP_DB = 1.0
"""SQNR (vs fp32) the kernels may lose against the reference path before it is reported."""

MAX_DISAGREEMENT = 0.01
"""Share of samples whose top-1 may differ between the kernels and the reference path (near ties)."""

_INTEGER_OPS = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "QLinearAdd", "QLinearMul", "QAttention", "DynamicQuantizeLSTM"}

Runner = Callable[[Feeds], Feeds]


@dataclass(frozen=True)
class KernelCheck:
    """The kernels against the reference path, on the same samples."""

    reference: str  # what the reference run was
    kernel_sqnr_db: float  # vs the fp32 reference model
    reference_sqnr_db: float  # vs the fp32 reference model
    gap_db: float  # reference - kernel (positive: the kernels lose)
    top1_disagreement: float | None  # kernels vs reference path; None: outputs are not score vectors
    saturated: bool
    message: str


def wants_kernel_check(entry: ArtifactEntry) -> bool:
    """Integer artifacts of ONNX Runtime (``.onnx``) and LiteRT."""
    integer = entry.precision not in ("fp32", "fp16")
    return integer and entry.file is not None and Path(entry.file).suffix in (".onnx", ".tflite")


class KernelChecker:
    """Runs the reference path beside the kernels, batch by batch, and scores both."""

    def __init__(self, entry: ArtifactEntry, target: Target, path: Path) -> None:
        self.entry, self.target, self.path = entry, target, path
        self.reference, self.runner = _reference_runner(path)
        self.reference_scores = Scorer("top1")  # its SQNR vs fp32; labels are the kernels' business
        self.between = Scorer("top1")  # kernels (outputs) vs reference path (reference)

    def update(self, expected: Feeds, native_in: Feeds, decoded: Feeds) -> None:
        """``expected``: the fp32 model's outputs; ``native_in``: what the kernels ran; ``decoded``: their result."""
        simulated = self.target.decode_outputs(self.path, self.runner(native_in))
        self.reference_scores.update(expected, simulated, None)
        self.between.update(simulated, decoded, None)

    def result(self, kernel: Scores) -> KernelCheck:
        reference = self.reference_scores.result()
        gap = _gap(reference.sqnr_db, kernel.sqnr_db)
        agreement = self.between.result().top1_agreement
        disagreement = None if agreement is None else 1.0 - agreement
        saturated = gap > GAP_DB or (disagreement is not None and disagreement > MAX_DISAGREEMENT)
        return KernelCheck(self.reference, kernel.sqnr_db, reference.sqnr_db, gap, disagreement, saturated,
                           _message(self.entry, saturated, gap, disagreement, self.reference))


def _reference_runner(path: Path) -> tuple[str, Runner]:
    if path.suffix == ".tflite":
        return "LiteRT reference kernels", bundle_runner.load(path, reference_kernels=True)
    if _has_integer_ops(path):
        session = create_session(path, optimize=True, config={PRECISE_INT8_KEY: "1"})
        described = "ORT precise int8 kernels"
    else:
        session = create_session(path)  # optimizations off: the QDQ simulation
        described = "QDQ simulation (graph optimizations off)"
    return described, lambda feeds: run_session(session, feeds)


def _has_integer_ops(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in _INTEGER_OPS for node in model.graph.node)


def _gap(reference_db: float, kernel_db: float) -> float:
    if math.isinf(reference_db) and math.isinf(kernel_db):
        return 0.0
    return float(np.clip(reference_db - kernel_db, -1e9, 1e9))


def _message(entry: ArtifactEntry, saturated: bool, gap: float, disagreement: float | None,
             reference: str) -> str:
    agree = "" if disagreement is None else f", top-1 differs on {disagreement:.1%} of samples"
    if not saturated:
        return f"int8 kernels match the {reference} (SQNR gap {gap:.2f} dB{agree})"
    host = detect_host_cpu()
    fix = (f"recompile with --cpu {host.family} (or auto on this machine): weights that can saturate are "
           "then stored as uint8" if entry.runtime == "onnxruntime" and host.family == "x86-avx2"
           else "run it on a CPU whose int8 kernels accumulate in int32 (VNNI, ARM64), or use the fp32/fp16 artifact")
    built = f" (built for {entry.cpu})" if entry.cpu else ""
    return (f"kernel saturation on this CPU ({host.family}){built}: the int8 kernels lose {gap:.1f} dB SQNR "
            f"against the {reference}{agree}. Fix: {fix}.")
