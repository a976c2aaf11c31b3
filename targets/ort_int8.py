"""ONNX Runtime on CPU, int8: static QDQ from calibration data, or dynamic int8.

Static: QuantizeLinear/DequantizeLinear around every quantizable node, uint8
activations with ranges from the calibration data, symmetric per-channel int8
weights (our ``quantize-static`` pass, i.e. ORT's QDQ emitter fed by our
streaming calibration). ORT fuses the Q/DQ pairs into integer kernels.

int8 is not always faster on a CPU (onnxruntime #20052: QDQ on small or
MatMul-bound models can lose to fp32). So export measures the candidate(s)
against fp32 on this machine, side by side, and records the medians in the
artifact's notes; a slower int8 artifact gets a WARNING and a note, or is
refused with ``max_slowdown``. For MatMul-heavy models without convolutions
(transformers, MLPs), ``mode="auto"`` also builds dynamic int8 (weights int8,
activations quantized at run time, no calibration needed) and keeps whichever
of the two measures faster: activation ranges in such models vary per input,
and ORT's dynamic MatMulInteger kernels are its tuned path for them. Speed
counts only among candidates whose output SQNR against fp32 (on the same
sample) is at least 20 dB; if none is, the most accurate one is kept and the
notes say so. Static quantization runs ``clamp-mask-constants`` first (a
transformer's -3.4e38 attention mask would otherwise ruin every range).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.core.cpu import CPU_METADATA_KEY, CpuFamily, resolve_cpu, saturation_possible
from edgeopt.core.errors import CalibrationDataError, ExportError, PassOptionError
from edgeopt.core.runtime import Feeds, random_feeds, run_model
from edgeopt.core.target import CalibrationReader, raise_for_issues
from edgeopt.targets.ort import OrtCpuTarget
from edgeopt.targets.ort_latency import side_by_side_ms

logger = logging.getLogger(__name__)

Mode = Literal["auto", "static", "dynamic"]

MIN_SQNR_DB = 20.0
"""Output SQNR vs fp32 (on the timing sample) a candidate needs before its speed counts."""


class OrtCpuInt8Target(OrtCpuTarget):
    """ONNX Runtime on CPU, int8 (static QDQ, or dynamic int8 where that measures faster).

    Args:
        mode: ``static`` (QDQ, needs calibration), ``dynamic``, or ``auto``: static,
            plus dynamic for MatMul-heavy models without Conv, keeping the faster.
        max_slowdown: Refuse (``ExportError``) an artifact whose median latency is
            more than this many times fp32's; None only warns.
        samples: Calibrate on at most this many samples (None: all).
        latency_repeat: Timed runs per model for the side-by-side measurement.
        ort_format: Also write ``model.ort`` for ORT Mobile.
        cpu: The CPU family the artifact is for: ``auto`` (this machine), ``x86-avx2``
            (x86 without VNNI: weights stored so that the kernels cannot saturate),
            ``x86-vnni`` or ``arm64``.
    """

    name: ClassVar[str] = "ort-cpu-int8"
    description: ClassVar[str] = "ONNX Runtime on CPU, int8 (static QDQ per-channel, or dynamic if faster)"
    precision: ClassVar[str] = "int8"
    needs_calibration: ClassVar[bool] = True

    def __init__(
        self,
        *,
        mode: Mode = "auto",
        max_slowdown: float | None = None,
        samples: int | None = None,
        latency_repeat: int = 20,
        ort_format: bool = False,
        cpu: str = "auto",
    ) -> None:
        super().__init__(ort_format=ort_format)
        self.cpu = cpu
        if cpu != "auto":
            resolve_cpu(cpu)  # an unknown name fails here, not after calibration
        if mode not in ("auto", "static", "dynamic"):
            raise PassOptionError(f"ort-cpu-int8: unknown mode '{mode}'. Use auto, static or dynamic.")
        self.mode = mode
        self.max_slowdown = max_slowdown
        self.samples = samples
        self.latency_repeat = latency_repeat

    def export(
        self, model: ir.Model, out_dir: Path, *, calibration: CalibrationReader | None = None
    ) -> Path:
        """Quantize, measure against fp32 on this machine, write ``out_dir/model.onnx``.

        Raises:
            CalibrationDataError: static quantization is needed and ``calibration`` is None.
            ExportError: int8 is slower than ``max_slowdown`` times fp32.
        """
        raise_for_issues(self.name, self.check(model))
        family = self.cpu_family
        candidates = self._candidates(model, calibration)
        guarded = _fit_to_cpu(candidates, family)
        feeds = _one_sample(model, calibration)
        latency = side_by_side_ms({"fp32": model, **candidates}, feeds, repeat=self.latency_repeat)
        sqnr = {name: output_sqnr_db(model, candidate, feeds) for name, candidate in candidates.items()}
        accurate = [name for name in candidates if sqnr[name] >= MIN_SQNR_DB]
        # The fastest candidate that is accurate enough; if none is, the most accurate.
        chosen = (min(accurate, key=lambda name: latency[name]) if accurate
                  else max(candidates, key=lambda name: sqnr[name]))
        ratio = latency[chosen] / latency["fp32"]
        measured = ", ".join(f"{name} {ms:.4g} ms" for name, ms in latency.items())
        notes = [f"int8 mode: {chosen} ({len(candidates)} candidate(s) measured)",
                 f"median latency on this machine (batch of 1, side by side): {measured}"]
        if ratio > 1.0:
            notes.append(f"int8 is {ratio:.2f}x slower than fp32 on this machine (onnxruntime #20052); "
                         "consider the fp32 artifact (ort-cpu) here")
            logger.warning("ort-cpu-int8: %s", notes[-1])
        else:
            notes.append(f"int8 is {1 / ratio:.2f}x faster than fp32 on this machine")
        notes.append("SQNR vs fp32 on that sample: " + ", ".join(f"{n} {db:.1f} dB" for n, db in sqnr.items()))
        if not accurate:
            notes.append(f"no int8 candidate reaches {MIN_SQNR_DB:.0f} dB SQNR here: check the accuracy, "
                         "or use the fp32 (ort-cpu) or fp16 artifact")
            logger.warning("ort-cpu-int8: %s", notes[-1])
        if self.max_slowdown is not None and ratio > self.max_slowdown:
            raise ExportError(f"ort-cpu-int8: int8 is {ratio:.2f}x slower than fp32 on this machine "
                              f"({measured}), above max_slowdown={self.max_slowdown}. "
                              "Use the fp32 artifact (ort-cpu), or raise max_slowdown.")
        notes.append(_cpu_note(family, guarded[chosen]))
        logger.info("ort-cpu-int8: %s", "; ".join(notes))
        candidates[chosen].metadata_props[CPU_METADATA_KEY] = family
        return self.save(candidates[chosen], out_dir, notes)

    @property
    def cpu_family(self) -> CpuFamily:
        """The family the artifact is built for (``auto`` resolved to this machine's)."""
        return resolve_cpu(self.cpu)

    def _candidates(self, model: ir.Model, calibration: CalibrationReader | None) -> dict[str, ir.Model]:
        from edgeopt.passes import ClampMaskConstantsPass, QuantizeDynamicPass, QuantizeStaticPass, SmoothQuantPass
        from edgeopt.passes.smooth_quant import DYNAMIC_SMOOTH_ALPHA

        dynamic = self.mode == "dynamic" or (self.mode == "auto" and is_matmul_heavy(model))
        candidates: dict[str, ir.Model] = {}
        if self.mode == "static" or (self.mode == "auto" and (calibration is not None or not dynamic)):
            if calibration is None:
                raise CalibrationDataError(
                    "ort-cpu-int8: static int8 needs calibration data: pass --calib DATA (a folder of "
                    ".npy/.npz or images, or random:N to try it out).")
            static = model.clone()
            ClampMaskConstantsPass()(static)  # a -3.4e38 attention mask would wreck every range
            QuantizeStaticPass(calibration=calibration, per_channel=True, activation_type="uint8",
                               weight_type="int8", samples=self.samples, cpu=None)(static)
            candidates["static"] = static
        if dynamic:
            quantized = model.clone()
            if calibration is not None:  # activation outliers into the weights before per-tensor dynamic int8
                SmoothQuantPass(calibration=calibration, alpha=DYNAMIC_SMOOTH_ALPHA, insert_mul=True,
                                samples=self.samples)(quantized)
            if QuantizeDynamicPass(per_channel=True, weight_type="int8", cpu=None)(quantized).modified:
                candidates["dynamic"] = quantized
        if not candidates:
            raise ExportError("ort-cpu-int8: dynamic int8 found no MatMul/Gemm weights to quantize. "
                              "Use mode=static with calibration data.")
        return candidates


def _fit_to_cpu(candidates: dict[str, ir.Model], family: CpuFamily) -> dict[str, int]:
    """Rewrite each candidate's weights for ``family`` in place; weight tensors rewritten per candidate."""
    from edgeopt.passes import AvoidInt8SaturationPass

    rewritten = {}
    for name, candidate in candidates.items():
        guard = AvoidInt8SaturationPass(cpu=family)
        guard(candidate)
        rewritten[name] = guard.widened + guard.narrowed
    return rewritten


def _cpu_note(family: CpuFamily, rewritten: int) -> str:
    if not saturation_possible(family):
        return f"built for CPU family {family} (int8 kernels accumulate in int32: nothing to guard)"
    return (f"built for CPU family {family}: {rewritten} weight tensor(s) that could saturate ORT's u8 x s8 "
            "kernels stored as uint8 (zero point 128, same values), run by the exact u8 x u8 kernels")


def is_matmul_heavy(model: ir.Model) -> bool:
    """No convolution, and at least one MatMul/Gemm with a constant weight (transformers, MLPs)."""
    ops = [node for node in model.graph]
    if any(n.op_type in ("Conv", "ConvTranspose") for n in ops):
        return False
    return any(n.op_type in ("MatMul", "Gemm") and len(n.inputs) > 1 and n.inputs[1] is not None
               and n.inputs[1].const_value is not None for n in ops)


def output_sqnr_db(reference: ir.Model, candidate: ir.Model, feeds: Feeds) -> float:
    """SQNR (dB) of ``candidate``'s outputs against ``reference``'s, all outputs pooled."""
    expected, got = run_model(reference, feeds), run_model(candidate, feeds)
    signal = sum(float((np.asarray(v, np.float64) ** 2).sum()) for v in expected.values())
    noise = sum(float(((np.asarray(got[k], np.float64) - np.asarray(v, np.float64)) ** 2).sum())
                for k, v in expected.items())
    return float(10 * np.log10(signal / noise)) if noise > 0 else float("inf")


def _one_sample(model: ir.Model, calibration: CalibrationReader | None) -> Feeds:
    """The first calibration sample (a batch of 1, or of the model's fixed batch size),
    or random inputs without data."""
    if calibration is None:
        return random_feeds(model)
    from edgeopt.core.runtime import model_inputs
    from edgeopt.data.readers import batches

    fixed = [v.shape[0] for v in model_inputs(model) if v.shape and isinstance(v.shape[0], int)]
    size = int(fixed[0]) if fixed else 1
    return next(iter(batches(calibration, model, batch_size=size, limit=size)))
