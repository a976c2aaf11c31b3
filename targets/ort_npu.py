"""ONNX Runtime on an NPU execution provider (QNN HTP, NNAPI): static-shape QDQ.

What those EPs want, per their docs: a QDQ model with uint8 activations (or
uint16, "A16W8", where 8 bits lose too much: transformers, regression heads),
symmetric int8 weights (per channel), and static shapes (the HTP compiles one
graph per shape). Calibration and the QDQ graph come from our ``quantize-static``
pass; the shapes from ``fix-static-shapes``. ``clamp-mask-constants`` first turns
a transformer's -3.4e38 attention-mask constant into -100, without which no
activation range in the attention survives quantization.

An op the EP has no builder for does not fail: ORT runs it on the CPU EP, at the
cost of a round trip per fallback. ``check`` reports those nodes as non-fatal
issues, and the artifact carries the partition table (node -> NPU or CPU) in its
metadata and notes. ``strict=True`` makes a fallback an error instead. Here the
artifact runs on ORT's CPU EP (no NPU is attached), which executes the same QDQ
graph; its numbers are the reference a device run is compared with. An NPU
accumulates int8 products in int32, so the host stand-in runs ORT's x86 int8
kernels in their precise mode (``session.x64quantprecision``): on x86 without
VNNI the default kernels saturate (:mod:`edgeopt.core.cpu`) where the NPU would not.
The artifact itself keeps the symmetric int8 weights the NPU wants.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import onnx
import onnx_ir as ir

from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import PRECISE_INT8_KEY, Feeds, create_session, run_model, run_session
from edgeopt.core.target import CalibrationReader, Issue, raise_for_issues
from edgeopt.targets.npu_ops import EP_NAMES, Ep, Placement, partition, summary, unquantized_nodes
from edgeopt.targets.ort import OrtCpuTarget

logger = logging.getLogger(__name__)

LOW_SQNR_DB = 20.0
"""Below this output SQNR (about 10 % noise amplitude) export advises 16-bit activations."""

PARTITION_KEY = "edgeopt.partition"
"""Metadata key of the partition table: a JSON list of [node, op, device, reason]."""


class OrtNpuTarget(OrtCpuTarget):
    """ONNX Runtime on an NPU EP: QDQ with uint8 (or 16-bit) activations, int8 symmetric
    weights, static shapes, and a partition table of NPU vs CPU-fallback nodes.

    Args:
        ep: Whose op list decides the partition: ``qnn`` (Qualcomm HTP) or ``nnapi``.
        activations: 8 (uint8, A8W8) or 16 (uint16, A16W8).
        batch_size: Size of a dynamic batch axis (``fix-static-shapes``).
        max_sequence_length: Size of other dynamic axes (transformer sequence length).
            Without it (or ``dims``), export takes them from the first calibration feed.
        dims: Sizes of named dynamic dimensions, e.g. ``{"seq": 128}``.
        strict: Refuse a model with any node the NPU does not take.
        samples: Calibrate on at most this many samples (None: all).
        ort_format: Also write ``model.ort`` for ORT Mobile.
    """

    name: ClassVar[str] = "ort-npu"
    description: ClassVar[str] = "ONNX Runtime on an NPU EP (QNN/NNAPI): static-shape QDQ, u8/u16 acts, s8 weights"
    device: ClassVar[str] = "npu"
    precision: str = "a8w8"  # "a16w8" with activations=16 (per instance, hence no ClassVar)
    needs_calibration: ClassVar[bool] = True

    def __init__(
        self,
        *,
        ep: Ep = "qnn",
        activations: Literal[8, 16] = 8,
        batch_size: int = 1,
        max_sequence_length: int | None = None,
        dims: Mapping[str, int] | None = None,
        strict: bool = False,
        samples: int | None = None,
        ort_format: bool = False,
    ) -> None:
        super().__init__(ort_format=ort_format)
        if ep not in EP_NAMES:
            raise PassOptionError(f"ort-npu: unknown ep '{ep}'. Use one of: {', '.join(EP_NAMES)}.")
        if activations not in (8, 16):
            raise PassOptionError(f"ort-npu: activations must be 8 or 16, got {activations!r}.")
        self.ep: Ep = ep
        self.activations = activations
        self.precision = "a16w8" if activations == 16 else "a8w8"
        self.batch_size = batch_size
        self.max_sequence_length = max_sequence_length
        self.dims = dict(dims or {})
        self.strict = strict
        self.samples = samples

    def check(self, model: ir.Model) -> list[Issue]:
        """ORT kernel problems (fatal), dynamic input dims and NPU fallbacks (non-fatal)."""
        from edgeopt.passes.fix_static_shapes import dynamic_dims

        issues = super().check(model)
        for name, axis, dim in dynamic_dims(model):
            issues.append(Issue(name, "input", f"axis {axis} ('{dim}') is dynamic; the NPU needs static shapes",
                                "prepare()/export fix it (fix-static-shapes: batch_size, max_sequence_length, "
                                "dims)", fatal=False))
        for place in partition(model, self.ep):
            if place.device == "cpu":
                issues.append(Issue(place.node, place.op, f"runs on the CPU EP: {place.reason}",
                                    "Replace the op with one the NPU takes, or accept the fallback",
                                    fatal=self.strict))
        return issues

    def prepare(self) -> ir.passes.PassBase:
        """fix-static-shapes (sizes it knows), clamp-mask-constants, cleanup."""
        from edgeopt.passes import ClampMaskConstantsPass
        from edgeopt.pipeline.runner import cleanup

        return ir.passes.Sequential(self._static_shapes(strict=False), ClampMaskConstantsPass(), cleanup())

    def _static_shapes(self, *, strict: bool, dims: Mapping[str, int] | None = None) -> ir.passes.PassBase:
        from edgeopt.passes.fix_static_shapes import FixStaticShapesPass

        return FixStaticShapesPass(dims={**(dims or {}), **self.dims}, batch_size=self.batch_size,
                                   max_sequence_length=self.max_sequence_length, strict=strict)

    def export(
        self, model: ir.Model, out_dir: Path, *, calibration: CalibrationReader | None = None
    ) -> Path:
        """Fix shapes, quantize to QDQ, write ``out_dir/model.onnx`` with its partition table.

        Raises:
            CalibrationDataError: ``calibration`` is None.
            UnsupportedOpError: a node ORT cannot run at all, or (``strict``) a CPU fallback.
        """
        from edgeopt.passes import ClampMaskConstantsPass, QuantizeStaticPass

        raise_for_issues(self.name, self.check(model))
        if calibration is None:
            raise CalibrationDataError("ort-npu: NPU quantization needs calibration data: pass --calib DATA "
                                       "(a folder of .npy/.npz or images, or random:N to try it out).")
        work = model.clone()
        self._static_shapes(strict=True, dims=_dims_from_data(work, calibration))(work)
        ClampMaskConstantsPass()(work)  # a -3.4e38 attention mask would make every range useless
        float_model = work.clone()
        QuantizeStaticPass(calibration=calibration, per_channel=True, weight_type="int8", op_types=("all",),
                           activation_type="uint16" if self.activations == 16 else "uint8",
                           batch_size=_fixed_batch(work), samples=self.samples,
                           cpu=None)(work)  # the NPU wants its symmetric int8 weights; it does not saturate
        table = partition(float_model, self.ep, unquantized=unquantized_nodes(float_model, work))
        shapes = ", ".join(f"{v.name}{list(v.shape or [])}" for v in work.graph.inputs if not v.is_initializer())
        notes = [summary(table, self.ep),
                 f"QDQ: uint{self.activations} activations (asymmetric), int8 symmetric per-channel weights",
                 f"static input shapes: {shapes}", *self._fidelity_notes(float_model, work, calibration)]
        work.metadata_props[PARTITION_KEY] = json.dumps([[p.node, p.op, p.device, p.reason] for p in table])
        logger.info("ort-npu: %s", "; ".join(notes))
        return self.save(work, out_dir, notes)

    def _fidelity_notes(self, float_model: ir.Model, quantized: ir.Model, calibration: CalibrationReader) -> list[str]:
        """SQNR of the QDQ model vs float on the first calibration batch, with advice when it is low."""
        from edgeopt.data.readers import batches

        size = _fixed_batch(float_model)
        feeds = next(iter(batches(calibration, float_model, batch_size=size, limit=size)))
        expected, got = run_model(float_model, feeds), run_model(quantized, feeds)
        signal = sum(float((np.asarray(v, np.float64) ** 2).sum()) for v in expected.values())
        noise = sum(float(((np.asarray(got[k], np.float64) - np.asarray(v, np.float64)) ** 2).sum())
                    for k, v in expected.items())
        sqnr = 10 * np.log10(signal / noise) if noise > 0 else float("inf")
        notes = [f"QDQ vs float on the first calibration batch: SQNR {sqnr:.1f} dB"]
        if sqnr < LOW_SQNR_DB and self.activations == 8:
            notes.append(f"8-bit activations lose too much here (SQNR below {LOW_SQNR_DB} dB): "
                         "try activations=16 (A16W8), which QNN HTP runs natively")
            logger.warning("ort-npu: %s", notes[-1])
        return notes

    def run_native(self, artifact: Path, feeds: Feeds) -> Feeds:
        """Run on the host's CPU EP, standing in for the NPU (int8 kernels in precise mode)."""
        return run_session(_host_session(artifact), feeds)

    def load_native(self, artifact: Path) -> Callable[[Feeds], Feeds]:
        """A loaded host runner for validation (one session, as :meth:`run_native` runs)."""
        session = _host_session(artifact)
        return lambda feeds: run_session(session, feeds)

    def run(self, artifact: Path, feeds: Feeds) -> Feeds:
        """Like every target's ``run``; a batch larger than the artifact's fixed batch runs
        in chunks of that size (the static shape) and the outputs are concatenated."""
        fixed = _fixed_batch_of(artifact)
        rows = {len(a) for a in feeds.values() if getattr(a, "ndim", 0)}
        if fixed is None or rows in ({fixed}, set()) or len(rows) != 1 or next(iter(rows)) % fixed:
            return super().run(artifact, feeds)
        session = _host_session(artifact)  # one session for every chunk
        parts = [run_session(session, {k: v[i:i + fixed] for k, v in feeds.items()})
                 for i in range(0, next(iter(rows)), fixed)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def partition_table(self, artifact: Path) -> list[Placement]:
        """The partition table export stored in ``artifact`` (float-graph nodes)."""
        model = onnx.load(str(artifact), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        return [Placement(node, op, device, reason) for node, op, device, reason
                in json.loads(props.get(PARTITION_KEY, "[]"))]


def _host_session(artifact: Path) -> Any:
    """ORT's CPU EP with default optimizations, its x86 int8 kernels in precise mode."""
    return create_session(artifact, optimize=True, config={PRECISE_INT8_KEY: "1"})


def _dims_from_data(model: ir.Model, calibration: CalibrationReader) -> dict[str, int]:
    """Sizes of named non-batch dynamic dims, read off the first calibration feed (the data
    the artifact is calibrated on has the shapes it will run)."""
    from edgeopt.data.readers import batches
    from edgeopt.passes.fix_static_shapes import dynamic_dims

    wanted = [(name, axis, dim) for name, axis, dim in dynamic_dims(model) if axis > 0 and dim != "?"]
    if not wanted:
        return {}
    size = _fixed_batch(model)
    first = next(iter(batches(calibration, model, batch_size=size, limit=size)))
    return {dim: int(first[name].shape[axis]) for name, axis, dim in wanted
            if name in first and first[name].ndim > axis}


def _fixed_batch_of(artifact: Path) -> int | None:
    from edgeopt.targets.ort import ort_signature

    first = [spec.shape[0] for spec in ort_signature(artifact).inputs if spec.shape]
    return first[0] if first and isinstance(first[0], int) else None


def _fixed_batch(model: ir.Model) -> int | None:
    from edgeopt.core.runtime import model_inputs

    fixed = [v.shape[0] for v in model_inputs(model) if v.shape and isinstance(v.shape[0], int)]
    return int(fixed[0]) if fixed else None
