"""Static int8 (or 16-bit) quantization with our streaming calibration and ORT's emitters.

Calibration is ours (``edgeopt.calibration.stream``): statistics are collected batch by
batch from one ONNX Runtime session, so memory does not grow with the number
of samples, and percentile / entropy / MSE ranges come from fixed-size
histograms. The QDQ and QOperator graphs are emitted by ONNX Runtime's own
quantizers (``QDQQuantizer``, ``ONNXQuantizer``) from those ranges, so the result
is what ORT's kernels and execution providers expect.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.observers import RangeCandidatesObserver, make_observer_factory
from edgeopt.calibration.range_choice import choose_ranges
from edgeopt.calibration.stream import CalibrationResult, calibrate
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.model_io import serialize_with_data
from edgeopt.core.pass_base import EdgeoptPass, adopt
from edgeopt.core.runtime import Feeds
from edgeopt.data.readers import batches, open_reader
from edgeopt.passes.avoid_int8_saturation import AvoidInt8SaturationPass
from edgeopt.passes.quantize_common import (
    TRANSFORMER_OP_TYPES,
    ir_from_ort,
    is_transformer_like,
    ort_type,
    prepare_for_quantization,
    quiet_root_logging,
    shape_nodes,
    unquantize_float_consumers,
    unquantize_inputs,
)
from edgeopt.passes.quantize_rounding import apply_learned_rounding, fit_rounding, quantized_weight_nodes
from edgeopt.passes.quantize_tables import gather_tables, quantize_gather_tables
from edgeopt.passes.remove_unused import RemoveUnusedPass

logger = logging.getLogger(__name__)

Method = Literal["minmax", "moving-average", "percentile", "entropy", "mse", "auto"]


class QuantizeStaticPass(EdgeoptPass):
    """Quantize weights and activations with ranges calibrated on sample data.

    The model is first pre-processed by our own passes (weights lifted from
    Constant nodes, BatchNorm folded, opset raised to 13 when lower, shapes
    inferred). Graph input and output names and dtypes are kept (float I/O).

    Args:
        calibration: Sample data: a re-iterable of feeds, or a path/spec for
            :func:`edgeopt.data.readers.open_reader` (folder of .npy/.npz or images,
            ``random:N``). Not needed when ``ranges`` is given.
        ranges: Precomputed ``tensor name -> (low, high)``, e.g. from ``edgeopt.calibration.stream``.
        method: How ranges are computed from the data; ``auto`` (default) picks each
            tensor's range among MinMax, percentile and MSE by its consumers' error.
        percentile: For ``method="percentile"``.
        format: ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs) or ``"qoperator"``
            (QLinearConv, QLinearMatMul, ...).
        per_channel: Per-output-channel weight scales.
        activation_type: ``uint8`` (default), ``int8``, or 16-bit for NPUs (A16W8).
        weight_type: ``int8`` (symmetric) or ``uint8``.
        symmetric_activations: Zero point 0 for activations.
        op_types: Only quantize these op types. Empty (default): every type ORT can, except in
            transformers (:func:`~edgeopt.passes.quantize_common.is_transformer_like`), where MatMul, Gemm
            and Gather tables only; ``("all",)``: every type ORT can, always.
        nodes: Only quantize these node names.
        exclude: Never quantize these node names (they stay float).
        samples: Use at most this many calibration samples.
        batch_size: Re-batch the calibration data to this size.
        on_batch: Called with the number of samples seen so far (progress bars).
        rounding: ``learned`` (default): int8 weight codes fitted on each layer's inputs from the
            calibration data (:mod:`edgeopt.passes.quantize_rounding`; QDQ with int8 weights);
            ``nearest``: round to nearest, as ORT does.
        cpu: The CPU family the model is for (:mod:`edgeopt.core.cpu`; ``auto``: this machine): on
            ``x86-avx2`` weights that could saturate ORT's int8 kernels are stored as uint8
            (``avoid-int8-saturation``). None leaves the weights as emitted (NPUs want int8).
    """

    name = "quantize-static"
    preserves_semantics = False
    path_options: ClassVar[tuple[str, ...]] = ("calibration",)
    """Options holding paths; a recipe resolves them relative to itself."""

    def __init__(
        self,
        *,
        calibration: str | Iterable[Feeds] | None = None,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        method: Method = "auto",
        percentile: float = 99.999,
        format: Literal["qdq", "qoperator"] = "qdq",
        per_channel: bool = True,
        activation_type: Literal["uint8", "int8", "uint16", "int16"] = "uint8",
        weight_type: Literal["int8", "uint8"] = "int8",
        symmetric_activations: bool = False,
        op_types: tuple[str, ...] = (),
        nodes: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        samples: int | None = None,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        rounding: Literal["nearest", "learned"] = "learned",
        cpu: str | None = "auto",
    ) -> None:
        super().__init__()
        if rounding not in ("nearest", "learned"):
            raise PassOptionError(f"quantize-static: rounding must be nearest or learned, got {rounding!r}.")
        self.rounding = rounding
        self.cpu = cpu
        if calibration is None and ranges is None:
            raise CalibrationDataError(
                "quantize-static needs calibration data (--calib DATA) or precomputed ranges."
            )
        self.calibration = calibration
        self.ranges = ranges
        self.method = method
        self.percentile = percentile
        self.format = format
        self.per_channel = per_channel
        self.activation_type = activation_type
        self.weight_type = weight_type
        self.symmetric_activations = symmetric_activations
        self.op_types = op_types
        self.nodes = nodes
        self.exclude = exclude
        self.samples = samples
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.calibration_seconds: float | None = None
        """Set after a run that calibrated: wall time of the calibration."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        prepare_for_quantization(model)
        reader = self._reader(model)
        ranges = dict(self.ranges) if self.ranges is not None else self._calibrate(model, reader)
        quantized = quantize_with_ranges(
            model, ranges, format=self.format, per_channel=self.per_channel,
            activation_type=self.activation_type, weight_type=self.weight_type,
            symmetric_activations=self.symmetric_activations, op_types=static_op_types(model, self.op_types),
            nodes=self.nodes, exclude=self.exclude,
        )
        if self.rounding == "learned" and reader is not None:
            layers, hessians = fit_rounding(model, quantized_weight_nodes(quantized), reader,
                                            samples=self.samples, batch_size=self.batch_size)
            apply_learned_rounding(quantized, layers, hessians)
        adopt(model, quantized)
        if self.cpu is not None:
            AvoidInt8SaturationPass(cpu=self.cpu)(model)
        logger.info("quantize-static: %s, %s activations, %d calibrated tensors",
                    self.format, self.activation_type, len(ranges))
        return ir.passes.PassResult(model, modified=True)

    def _reader(self, model: ir.Model) -> Iterable[Feeds] | None:
        if self.calibration is None:
            return None
        return open_reader(self.calibration, model) if isinstance(self.calibration, str) else self.calibration

    def _calibrate(self, model: ir.Model, reader: Iterable[Feeds] | None) -> dict[str, tuple[float, float]]:
        assert reader is not None
        result = calibrate_activations(
            model, reader, method=self.method, percentile=self.percentile, activation_type=self.activation_type,
            symmetric=self.symmetric_activations, op_types=static_op_types(model, self.op_types),
            samples=self.samples, batch_size=self.batch_size, on_batch=self.on_batch)
        self.calibration_seconds = result.seconds
        logger.info("quantize-static: calibrated %d tensors on %d samples in %.1fs (%s)",
                    len(result.ranges), result.samples, result.seconds, self.method)
        return result.ranges


CHOICE_SAMPLES = 64
"""Method ``auto``: samples the candidate ranges are scored on (the first ones of the calibration data)."""


def calibrate_activations(
    model: ir.Model, reader: Iterable[Feeds], *, method: str, percentile: float, activation_type: str,
    symmetric: bool, op_types: Collection[str], samples: int | None, batch_size: int | None,
    on_batch: Callable[[int], None] | None = None,
) -> CalibrationResult:
    """Calibrate ``model``'s tensors by ``method``; ``auto`` then picks each range by its consumers' error.

    ``op_types`` are the types to be quantized (empty: all), whose nodes the ``auto`` choice scores.
    """
    options = observer_options(method, percentile=percentile, activation_type=activation_type, symmetric=symmetric)
    result = calibrate(model, batches(reader, model, batch_size=batch_size, limit=samples),
                       observer=make_observer_factory(method, **options), on_batch=on_batch)
    if method != "auto" or activation_type not in ("uint8", "int8"):
        return result  # 16-bit: MinMax (the codes are plenty)
    candidates = {name: obs.candidates() for name, obs in result.observers.items()
                  if isinstance(obs, RangeCandidatesObserver)}
    limit = min(samples or CHOICE_SAMPLES, CHOICE_SAMPLES)
    choice = choose_ranges(model, candidates, batches(reader, model, batch_size=batch_size, limit=limit),
                           consumer_types=set(op_types) or None, dtype=activation_type,  # type: ignore[arg-type]
                           symmetric=symmetric)
    return dataclasses.replace(result, ranges={**result.ranges, **choice.ranges},
                               seconds=result.seconds + choice.seconds)


def static_op_types(model: ir.Model, requested: Sequence[str]) -> tuple[str, ...]:
    """The op types static mode hands the quantizer (``()`` = every type ORT can)."""
    if tuple(requested) == ("all",):
        return ()
    if requested:
        return tuple(requested)
    if is_transformer_like(model):
        logger.info("quantize: transformer-like graph: static int8 of %s only (op_types=all to quantize every op)",
                    ", ".join(TRANSFORMER_OP_TYPES))
        return TRANSFORMER_OP_TYPES
    return ()


def observer_options(
    method: str, *, percentile: float, activation_type: str, symmetric: bool
) -> dict[str, Any]:
    """Observer options that follow the quantization settings (bits, symmetry)."""
    if method not in ("percentile", "entropy", "mse", "auto"):
        return {}
    options: dict[str, Any] = {"symmetric": symmetric}
    if method == "percentile":
        options["percentile"] = percentile
    if activation_type.endswith("16"):
        options["quant_bits"] = 16
    return options


def quantize_with_ranges(
    model: ir.Model,
    ranges: Mapping[str, tuple[float, float]],
    *,
    format: Literal["qdq", "qoperator"] = "qdq",
    per_channel: bool = True,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    symmetric_activations: bool = False,
    op_types: Iterable[str] = (),
    nodes: Iterable[str] = (),
    exclude: Iterable[str] = (),
    overrides: Mapping[str, str] | None = None,
) -> ir.Model:
    """A new model quantized by ORT's emitter from ``ranges`` (``model`` is untouched).

    ``model`` should be pre-processed (:func:`prepare_for_quantization`). ``overrides`` gives some
    activation tensors another type than ``activation_type`` (``{"conv1_out": "uint16"}``: mixed precision).
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    proto = serialize_with_data(model)
    act, weight = ort_type(activation_type), ort_type(weight_type)
    with quiet_root_logging():
        proto = update_opset_version(proto, weight, act)
    extra: dict[str, Any] = {
        "ActivationSymmetric": symmetric_activations,
        "WeightSymmetric": weight_type == "int8",
        "ForceQuantizeNoInputCheck": True,
    }
    kept_float = list(exclude)
    if kept_float:
        # ORT drops Relu/Clip after a quantized Conv when activations are asymmetric; a node
        # kept in float would then read the un-clipped tensor.
        extra["QDQKeepRemovableActivations"] = True
    if overrides:
        extra["TensorQuantOverrides"] = {name: [{"quant_type": ort_type(kind)}] for name, kind in overrides.items()}
    sixteen = activation_type.endswith("16") or any(kind.endswith("16") for kind in (overrides or {}).values())
    if sixteen and proto.opset_import[0].version < 21:
        extra["UseQDQContribOps"] = True  # 16-bit Q/DQ before opset 21 live in com.microsoft
    data = {name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
            for name, (low, high) in ranges.items()}
    tensors = TensorsData(CalibrationMethod.MinMax, data)
    types = list(op_types) or sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    quantized_types = set(types)
    only = set(nodes := list(nodes))
    lookups = [name for name in gather_tables(model, min_elements=0) if not only or name in only] \
        if "Gather" in quantized_types else []
    tables = set(gather_tables(model)) & set(lookups)  # a scale per row (quantize_tables); small ones stay float
    exclude = [*kept_float, *shape_nodes(model), *lookups]
    if format == "qoperator":
        quantizer: Any = ONNXQuantizer(proto, per_channel, False, QuantizationMode.QLinearOps, True,
                                       weight, act, tensors, list(nodes), list(exclude), types, extra)
    else:
        quantizer = QDQQuantizer(proto, per_channel, False, weight, act, tensors, list(nodes),
                                 list(exclude), types, extra)
    with quiet_root_logging():
        quantizer.quantize_model()
    quantized = ir_from_ort(quantizer.model.model)
    rewired = unquantize_inputs(quantized, kept_float) if kept_float else 0
    rewired += unquantize_float_consumers(quantized, quantized_types)
    tables -= set(kept_float)
    if quantize_gather_tables(quantized, tables) + rewired:
        RemoveUnusedPass()(quantized)
    return quantized
