"""The quantize road: calibrate once, emit, measure, explain and fall back.

Shared by ``edgeopt quantize``, ``edgeopt analyze``, recipes and the demo. For
static quantization the model is pre-processed and calibrated once; the
sensitivity report and the accuracy-aware fallback then re-emit the quantized
graph from the same ranges as often as they need.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.calibration.rounding import WeightLayer
from edgeopt.core.cpu import CPU_METADATA_KEY, resolve_cpu
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.inspect_model import ModelSummary, summarize
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import Feeds, create_session, random_feeds, run_session
from edgeopt.data.readers import batches, open_reader
from edgeopt.passes import (
    AvoidInt8SaturationPass,
    CorrectBiasPass,
    EqualizeCrossLayerPass,
    QuantizeDynamicPass,
    QuantizeWeightsPass,
    SmoothQuantPass,
)
from edgeopt.passes.quantize_common import is_transformer_like, prepare_for_quantization
from edgeopt.passes.quantize_rounding import apply_learned_rounding, fit_rounding, quantized_weight_nodes
from edgeopt.passes.quantize_static import calibrate_activations, quantize_with_ranges, static_op_types
from edgeopt.passes.smooth_quant import DYNAMIC_SMOOTH_ALPHA, MUL_PREFIX
from edgeopt.pipeline import cleanup
from edgeopt.quantization.analysis import FallbackResult, Metric, NodeError, agreement_metric, fallback, sensitivity
from edgeopt.quantization.mixed_precision import MixedPrecision, choose_16bit_tensors

logger = logging.getLogger(__name__)

Mode = Literal["static", "dynamic", "weight-only"]

Progress = Callable[[str, int], None]
"""(stage, samples so far) -> None, for progress bars."""


@dataclass(frozen=True)
class QuantizeConfig:
    """Everything ``edgeopt quantize`` can be told; defaults are the recommended setting."""

    mode: Mode = "static"
    method: str = "auto"
    """Static mode's calibration method (:data:`edgeopt.calibration.observers.OBSERVERS`). ``auto`` picks each
    tensor's range among MinMax, percentile and MSE by the error it causes at its consumers' outputs
    (:mod:`edgeopt.calibration.range_choice`); no single method was best on every model (simulation, 100
    calibration samples; minmax / mse / auto): depthwise CNN 33.1 / 35.5 / 35.5 dB, EfficientNet-Lite0
    24.3 / 24.5 / 24.4 dB, PP-OCRv4 recognizer CER 0.90 / 1.50 / 0.67 % (fp32 0.62 %)."""
    percentile: float = 99.999
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8", "uint16", "int16"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    symmetric_activations: bool = False
    op_types: tuple[str, ...] = ()
    """Op types static mode quantizes. Empty: every type ORT can, except in transformers
    (:func:`~edgeopt.passes.quantize_common.is_transformer_like`), where only MatMul, Gemm
    and Gather (``TRANSFORMER_OP_TYPES``); ``("all",)``: every type ORT can, always."""
    exclude: tuple[str, ...] = ()
    bits: Literal[4, 8] = 4
    block_size: int = 32
    weight_method: Literal["rtn", "hqq"] = "rtn"
    embedding_bits: Literal[0, 4, 8] = 0
    accuracy_level: int | None = 4
    samples: int | None = None
    batch_size: int | None = None
    eval_samples: int = 256
    max_drop: float | None = None
    max_evaluations: int = 10
    time_limit: float | None = None
    """``max_drop``: seconds after which the fallback starts no new evaluation (it keeps the best found)."""
    prepasses: tuple[str, ...] = ()
    """Run before calibration (static mode): ``equalize-cross-layer``, ``correct-bias``,
    ``smooth-quant`` (with an inserted Mul where no LayerNorm can absorb the scales)."""
    smooth: bool = True
    """SmoothQuant first (``smooth_alpha``, a Mul inserted where no LayerNorm absorbs the scales), which
    moves activation outliers into the weights: in dynamic mode with calibration data, and in static mode
    for transformer-like graphs (unless ``op_types`` is ``("all",)`` or the ``smooth-quant`` pre-pass is
    asked for). On MiniLM-L6 (100 sentences) embedding cosine: dynamic 0.9933 -> 0.9983, static
    0.9939 -> 0.9989 (alpha 0.85; 0.7: 0.9987, 0.95: 0.9985; NNCF's mixed preset: 0.9974)."""
    smooth_alpha: float = DYNAMIC_SMOOTH_ALPHA
    budget: float = 0.0
    """Static mode: share of the model's MACs (0 to 1) that may lose int8 kernels so that the activations
    around the most sensitive nodes are 16-bit (:mod:`edgeopt.quantization.mixed_precision`); 0: all 8-bit."""
    rounding: Literal["nearest", "learned"] = "learned"
    """Static mode: ``learned`` fits the int8 weight codes on each layer's inputs from the calibration
    data (:mod:`edgeopt.calibration.rounding`); ``nearest`` rounds to nearest. With the ``correct-bias``
    pre-pass (built for rounding to nearest) rounding is to nearest."""
    cleanup: bool = True
    """``quantize_file``: run the ``cleanup`` preset first (a raw export's Constant nodes and shape
    arithmetic get in the quantizer's way)."""
    cpu: str = "auto"
    """The CPU family the int8 model is for (:mod:`edgeopt.core.cpu`): ``auto`` (this machine),
    ``x86-avx2`` (weights that could saturate its kernels stored as uint8), ``x86-vnni``, ``arm64``."""


@dataclass
class QuantizeResult:
    output: Path
    before: ModelSummary
    after: ModelSummary
    score: float
    """Agreement with the float model on the evaluation data (top-1 or cosine)."""
    sqnr_db: float
    """SQNR of the first output vs float on the evaluation data."""
    calibration_seconds: float | None = None
    report: list[NodeError] | None = None
    fallback: FallbackResult | None = None
    op_types: list[str] | None = None
    """Static mode: the op types quantized (``["all"]``: every type ORT can)."""
    cpu: str | None = None
    """Static and dynamic modes: the CPU family the weights are stored for."""
    guarded_weights: int = 0
    """Weight tensors rewritten so that the CPU family's int8 kernels cannot saturate."""
    mixed_precision: MixedPrecision | None = None
    """Static mode with a budget: the 16-bit activations chosen."""
    extra: dict[str, Any] = field(default_factory=dict)


def quantize_file(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: QuantizeConfig,
    *,
    calibration: str | Iterable[Feeds] | None = None,
    report: bool = False,
    metric: Metric | None = None,
    progress: Progress | None = None,
) -> QuantizeResult:
    """Quantize ``model_path`` into ``output`` and measure it against the float model.

    Args:
        model_path: The float model.
        output: Where to write the quantized model (never the input).
        config: What to do.
        calibration: Sample data (re-iterable of feeds or a path / ``random:N`` spec).
            Required for static mode; used for evaluation in every mode (random
            inputs otherwise).
        report: Compute the per-node sensitivity table (static mode).
        metric: Scores a model (higher is better) for ``config.max_drop``; default:
            agreement with the float model on the evaluation data.
        progress: Progress callback for calibration and analysis.
    """
    resolve_cpu(config.cpu)  # an unknown family fails before any work
    if not 0.0 <= config.budget <= 1.0:
        raise PassOptionError(f"quantize: --budget is a share of the model's MACs, 0 to 1; got {config.budget}.")
    if config.time_limit is not None and not config.time_limit > 0:
        raise PassOptionError(f"quantize: --time-limit is in seconds and must be positive; got {config.time_limit}.")
    if config.budget > 0 and config.mode != "static":
        raise PassOptionError(f"quantize: --budget (16-bit activations) applies to static mode, not {config.mode}. "
                              "Drop --budget, or use --mode static with --calib.")
    model = load_model(model_path)
    check_model(model)
    before = summarize(model)
    if config.cleanup:
        cleanup()(model)
    reader = _reader(calibration, model, open_reader)
    if config.mode == "static" and reader is None:
        raise CalibrationDataError("static quantization needs calibration data: pass --calib DATA "
                                   "(a folder of .npy/.npz or images, or random:N to try it out).")
    float_model = model.clone()
    evaluation = list(batches(reader, model, batch_size=config.batch_size, limit=config.eval_samples)) \
        if reader is not None else [_random_batch(model)]
    result_model, extra = _quantize(model, config, reader, report, metric, evaluation, progress)
    if config.mode in ("static", "dynamic"):
        extra.update(_fit_to_cpu(result_model, config.cpu))
    out = save_model(result_model, output)
    score = agreement_metric(float_model, evaluation)(result_model)
    result = QuantizeResult(out, before, summarize(load_model(out)), score,
                            _output_sqnr(float_model, result_model, evaluation), **extra)
    return result


def _fit_to_cpu(model: ir.Model, cpu: str) -> dict[str, Any]:
    """Store the weights so that ``cpu``'s int8 kernels compute what the graph means; record the family."""
    guard = AvoidInt8SaturationPass(cpu=cpu)
    guard(model)
    family = resolve_cpu(cpu)
    model.metadata_props[CPU_METADATA_KEY] = family
    return {"cpu": family, "guarded_weights": guard.widened + guard.narrowed}


def _reader(calibration: Any, model: ir.Model, open_reader: Any) -> Any:
    if calibration is None:
        return None
    return open_reader(calibration, model) if isinstance(calibration, str | os.PathLike) else calibration


def _random_batch(model: ir.Model) -> Feeds:
    return random_feeds(model, default_dim=8)


def _quantize(
    model: ir.Model, config: QuantizeConfig, reader: Any, report: bool, metric: Metric | None,
    evaluation: list[Feeds], progress: Progress | None,
) -> tuple[ir.Model, dict[str, Any]]:
    if config.mode == "dynamic":
        if reader is not None and config.smooth:
            SmoothQuantPass(calibration=reader, alpha=config.smooth_alpha, insert_mul=True,
                            samples=config.samples, batch_size=config.batch_size)(model)
        QuantizeDynamicPass(per_channel=config.per_channel, weight_type=config.weight_type,
                            op_types=config.op_types, exclude=config.exclude, cpu=None)(model)
        return model, {}
    if config.mode == "weight-only":
        QuantizeWeightsPass(bits=config.bits, block_size=config.block_size, method=config.weight_method,
                            exclude=config.exclude, embedding_bits=config.embedding_bits,
                            accuracy_level=config.accuracy_level)(model)
        return model, {}
    return _quantize_static(model, config, reader, report, metric, evaluation, progress)


def _quantize_static(
    model: ir.Model, config: QuantizeConfig, reader: Any, report: bool, metric: Metric | None,
    evaluation: list[Feeds], progress: Progress | None,
) -> tuple[ir.Model, dict[str, Any]]:
    prepared = model.clone()
    prepare_for_quantization(prepared)
    _run_prepasses(prepared, config, reader)
    op_types = static_op_types(prepared, config.op_types)
    calibrated = calibrate_activations(
        prepared, reader, method=config.method, percentile=config.percentile,
        activation_type=config.activation_type, symmetric=config.symmetric_activations, op_types=op_types,
        samples=config.samples, batch_size=config.batch_size,
        on_batch=(lambda n: progress("calibrate", n)) if progress else None,
    )

    rounding: tuple[list[WeightLayer], dict[str, np.ndarray]] = ([], {})
    overrides: dict[str, str] = {}

    def emit(float_nodes: Sequence[str]) -> ir.Model:
        quantized = quantize_with_ranges(
            prepared, calibrated.ranges, format=config.format, per_channel=config.per_channel,
            activation_type=config.activation_type, weight_type=config.weight_type,
            symmetric_activations=config.symmetric_activations, op_types=op_types,
            exclude=[*config.exclude, *smoothing_muls, *float_nodes], overrides=overrides)
        if rounding[0]:
            apply_learned_rounding(quantized, *rounding)
        return quantized

    smoothing_muls = [n.name for n in prepared.graph if n.name and n.name.startswith(MUL_PREFIX)]

    quantized = emit(())
    if config.rounding == "learned" and "correct-bias" in config.prepasses:
        logger.info("quantize: correct-bias is built for rounding to nearest: learned rounding is off")
    elif config.rounding == "learned":
        # fitted once (one more pass over the data); every re-emission of the fallback reuses it
        rounding = fit_rounding(prepared, quantized_weight_nodes(quantized), reader, samples=config.samples,
                                batch_size=config.batch_size)
        apply_learned_rounding(quantized, *rounding)
    extra: dict[str, Any] = {"calibration_seconds": calibrated.seconds, "op_types": list(op_types) or ["all"]}
    if config.budget > 0:
        mixed = choose_16bit_tensors(prepared, sensitivity(prepared, quantized, evaluation), config.budget)
        overrides.update(dict.fromkeys(mixed.tensors, "uint16"))  # every later emission is mixed too
        extra["mixed_precision"] = mixed
        if mixed.tensors:
            quantized = emit(())
    ranked: list[NodeError] | None = None
    if report or config.max_drop is not None:
        ranked = sensitivity(prepared, quantized, evaluation,
                             on_batch=(lambda n: progress("analyze", n)) if progress else None)
        extra["report"] = ranked
    if config.max_drop is not None:
        assert ranked is not None
        score = metric or agreement_metric(prepared, evaluation)
        candidates = list(dict.fromkeys(
            name for e in ranked if e.introduced_db > 0 for name in (*e.fused, e.node)))
        result = fallback(emit, candidates, score,
                          float_score=score(prepared), max_drop=config.max_drop,
                          max_evaluations=config.max_evaluations, time_limit=config.time_limit)
        extra["fallback"] = result
        quantized = result.model
    return quantized, extra


PREPASSES = ("equalize-cross-layer", "correct-bias", "smooth-quant")


def _run_prepasses(model: ir.Model, config: QuantizeConfig, reader: Any) -> None:
    for name in config.prepasses:
        if name not in PREPASSES:
            raise PassOptionError(f"quantize: unknown pre-pass '{name}'; choose from {', '.join(PREPASSES)}.")
    data = dict(calibration=reader, samples=config.samples, batch_size=config.batch_size)
    # Order matters: equalize (exact), smooth (exact), then correct the biases of what is left.
    if "equalize-cross-layer" in config.prepasses:
        EqualizeCrossLayerPass()(model)
    if "smooth-quant" in config.prepasses:
        SmoothQuantPass(insert_mul=True, **data)(model)
    elif config.smooth and tuple(config.op_types) != ("all",) and is_transformer_like(model):
        SmoothQuantPass(alpha=config.smooth_alpha, insert_mul=True, **data)(model)
    if "correct-bias" in config.prepasses:
        CorrectBiasPass(per_channel=config.per_channel, weight_type=config.weight_type, **data)(model)


def _output_sqnr(float_model: ir.Model, quant_model: ir.Model, evaluation: list[Feeds]) -> float:
    a, b = create_session(float_model, optimize=True), create_session(quant_model, optimize=True)
    name = a.get_outputs()[0].name
    signal = noise = 0.0
    for feeds in evaluation:
        ref = np.asarray(run_session(a, feeds)[name], np.float64)
        got = np.asarray(run_session(b, feeds)[name], np.float64)
        signal += float((ref**2).sum())
        noise += float(((ref - got) ** 2).sum())
    return float("inf") if noise == 0 else 10 * float(np.log10(signal / noise))
