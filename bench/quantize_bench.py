"""edgeopt's quantizers against ONNX Runtime's own, on the same models and the same calibration data.

    python bench/quantize_bench.py [--models minilm,efficientnet,dwcnn,digits] [--json bench/results/quantize.json]
                                   [--quick] [--threads 1] [--no-calib-study] [--mem-cap-gb 10]

Needs the bench extra (``pip install -e ".[all,bench]"``) for the pretrained models.

For each model, in one run: every configuration is quantized from the SAME fp32 file with the
SAME calibration batches (``.npz`` files written once, read one batch at a time by both tools):

- ONNX Runtime: ``quantize_static`` QDQ U8S8 per-channel and per-tensor with MinMax, per-channel with
  Percentile (100 samples, in a subprocess under a memory cap: it keeps every activation), and
  ``quantize_dynamic`` per-tensor and per-channel.
- edgeopt (``quantize_file`` + ``QuantizeConfig``): static QDQ per-channel with minmax / percentile /
  entropy / mse, static minmax with ``max_drop`` fallback, dynamic per-channel; for transformers
  weight-only int8 (MatMulNBits) block 32 / 128.
- ``edgeopt-chain``: library passes chained in the bench (no library change needed), e.g.
  weight-only int8 with ``accuracy_level=4`` (a pass option ``QuantizeConfig`` does not carry)
  followed by dynamic quantization of the embedding Gathers.
- ``bench-ext``: what a small library change would give (the bench builds the missing piece):
  weight-only that also block-quantizes the embedding Gather (GatherBlockQuantized 8-bit or 4-bit).

Measured per configuration: fidelity vs fp32 on held-out data (SQNR of the output; top-1
agreement for classifiers; mean/min cosine of MiniLM's ``sentence_embedding``), task accuracy where
labels exist, file size, latency ratio vs fp32 (median of many interleaved batch-1 runs in this
process, sessions built once, ORT's default graph optimizations), and quantization wall time.
The calibration study runs each calibrator alone in a fresh subprocess at 100 and 1,000 samples and
reads its peak RSS (VmHWM) and wall time: edgeopt's ``calibrate()`` (after its pre-processing) against
ORT's calibrator (``create_calibrator`` + ``collect_data`` + ``compute_data``, as ``quantize_static``
runs it) for the same method. Goals from the quantization issue are checked and printed as met / not met.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import quantize_models as qm  # noqa: E402

DEFAULT_JSON = BENCH / "results" / "quantize.json"
DEFAULT_CACHE = BENCH / "results" / "quantize-cache"
SIZE_TOLERANCE = 0.02
"""'Same size' for the fidelity goal: at most 2 % larger than ORT's config (scale/zero-point overhead)."""
LATENCY_TOLERANCE = 0.05
"""'No worse' for the latency goal: at most 5 % slower (timer noise on a shared 2-core machine)."""
MEMORY_RATIO_GOAL = 1.2

Feeds = dict[str, np.ndarray]
logger = logging.getLogger("quantize_bench")


# --------------------------------------------------------------------------------------------------
# Memory and subprocesses
# --------------------------------------------------------------------------------------------------

def _status_kb(field_name: str, pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 8.0


def run_child(job: dict[str, Any], cap_gb: float, timeout_s: float = 900) -> dict[str, Any]:
    """Run ``job`` in a fresh ``python quantize_bench.py --_child`` process; kill it above ``cap_gb`` RSS.

    Returns the child's JSON result, or ``{"killed": ..., "peak_rss_mb": ...}``.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(job)]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        peak_kb, killed = 0, None
        while proc.poll() is None:
            rss = _status_kb("VmRSS", proc.pid)
            peak_kb = max(peak_kb, rss)
            if rss > cap_gb * 2**20:
                killed = f"killed at {rss / 2**20:.1f} GB RSS (cap {cap_gb:.1f} GB)"
            elif time.perf_counter() - started > timeout_s:
                killed = f"killed after {timeout_s:.0f}s"
            if killed:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if killed:
        return {"ok": False, "killed": killed, "peak_rss_mb": round(peak_kb / 1024, 1), "wall_s": round(wall, 1)}
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            result.setdefault("wall_s", round(wall, 1))
            return result
    return {"ok": False, "error": (stderr or stdout)[-1500:], "wall_s": round(wall, 1)}


def child_main(job: dict[str, Any]) -> None:
    """Inside a fresh process: one calibration (``calib``) or one isolated quantization (``quantize``)."""
    logging.basicConfig(level=logging.ERROR)
    import onnxruntime as ort  # noqa: F401  (imported before the baseline is read)

    import edgeopt.calibration.stream  # noqa: F401
    import edgeopt.passes  # noqa: F401

    files = [Path(f) for f in job["files"]]
    result: dict[str, Any] = {"ok": True}
    base_kb = _status_kb("VmRSS")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # ORT prints progress lines
            if job["kind"] == "calib":
                result.update(_child_calibrate(job, files))
            else:
                variant = VARIANTS[job["variant"]]
                started = time.perf_counter()
                extra = variant.build(Ctx(Path(job["model"]), files, job["case"], None), Path(job["out"]))
                result.update(extra or {})
                result["quantize_s"] = time.perf_counter() - started
    except Exception as e:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"[-1500:], "trace": traceback.format_exc()[-3000:]}
    result["base_rss_mb"] = round(base_kb / 1024, 1)
    result["peak_rss_mb"] = round(_status_kb("VmHWM") / 1024, 1)
    print(json.dumps(result))


def _child_calibrate(job: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    model_path, tool, method = Path(job["model"]), job["tool"], job["method"]
    reader = qm.FileFeeds(files)
    started = time.perf_counter()
    if tool == "edgeopt":
        from edgeopt.calibration.observers import make_observer_factory
        from edgeopt.calibration.stream import calibrate
        from edgeopt.core.model_io import load_model
        from edgeopt.passes.quantize_common import prepare_for_quantization

        model = load_model(model_path)
        prepare_for_quantization(model)
        ready = time.perf_counter()
        res = calibrate(model, reader, observer=make_observer_factory(method))
        return {"seconds": time.perf_counter() - started, "calibrate_s": res.seconds,
                "prepare_s": ready - started, "tensors": len(res.ranges), "samples": res.samples}
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = list(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates
    with tempfile.TemporaryDirectory(prefix="ort.calib.") as tmp:
        import onnx

        model = load_model_with_shape_infer(model_path)  # quantize_static's first step
        onnx.save_model(model, f"{tmp}/model_input.onnx", save_as_external_data=True)
        del model
        ready = time.perf_counter()
        calibrator = create_calibrator(Path(f"{tmp}/model_input.onnx"), op_types,
                                       augmented_model_path=f"{tmp}/augmented_model.onnx",
                                       calibrate_method={"minmax": CalibrationMethod.MinMax,
                                                         "percentile": CalibrationMethod.Percentile,
                                                         "entropy": CalibrationMethod.Entropy}[method])
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    end = time.perf_counter()
    return {"seconds": end - started, "calibrate_s": end - ready, "prepare_s": ready - started,
            "tensors": len(ranges.data)}


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------

@dataclass
class Ctx:
    model: Path
    files: list[Path]
    case: dict[str, Any]
    """name, kind, output, max_drop, eval_samples."""
    metric: Callable[[Any], float] | None


@dataclass
class Variant:
    key: str
    tool: str
    """ort | edgeopt | edgeopt-chain | bench-ext"""
    family: str
    """static | dynamic | weight-only"""
    build: Callable[[Ctx, Path], dict[str, Any] | None]
    note: str = ""
    isolate: bool = False
    transformer_only: bool = False
    quick: bool = True
    padded: bool = False
    """Calibrate on the padded copy of a transformer's data (ORT's histogram calibrators need equal shapes)."""


def _ort_static(per_channel: bool, method: str) -> Callable[[Ctx, Path], dict[str, Any]]:
    def build(ctx: Ctx, out: Path) -> dict[str, Any]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        quantize_static(str(ctx.model), str(out), qm.FileFeeds(ctx.files), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method))
        return {}

    return build


def _ort_dynamic(per_channel: bool) -> Callable[[Ctx, Path], dict[str, Any]]:
    def build(ctx: Ctx, out: Path) -> dict[str, Any]:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(ctx.model), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
        return {}

    return build


def _eo_file(**config: Any) -> Callable[[Ctx, Path], dict[str, Any]]:
    def build(ctx: Ctx, out: Path) -> dict[str, Any]:
        from edgeopt.quantization.quantize import QuantizeConfig, quantize_file

        options = dict(config)
        fallback = options.pop("fallback", False)
        if fallback:
            options["max_drop"] = ctx.case["max_drop"]
            options["eval_samples"] = ctx.case["calib_samples"]
        else:
            options["eval_samples"] = 8  # quantize_file's own check; the bench measures on held-out data
        result = quantize_file(ctx.model, out, QuantizeConfig(**options), calibration=qm.FileFeeds(ctx.files),
                               metric=ctx.metric if fallback else None)
        extra: dict[str, Any] = {"calibration_s": result.calibration_seconds}
        if result.fallback is not None:
            fb = result.fallback
            extra["fallback"] = {"float_nodes": list(fb.float_nodes), "evaluations": len(fb.steps),
                                 "score_on_calibration": fb.score, "drop": fb.drop}
        return extra

    return build


def _eo_chain(*steps: Callable[[Any], Any]) -> Callable[[Ctx, Path], dict[str, Any]]:
    """Library passes (or bench steps on the ModelProto) applied in order to the fp32 model."""

    def build(ctx: Ctx, out: Path) -> dict[str, Any]:
        import onnx
        import onnx_ir as ir

        from edgeopt.core.model_io import load_model, save_model

        model: Any = load_model(ctx.model)
        for step in steps:
            if getattr(step, "on_proto", False):
                proto = model if isinstance(model, onnx.ModelProto) else ir.serde.serialize_model(model)
                model = step(proto)
            else:
                if isinstance(model, onnx.ModelProto):
                    model = ir.serde.deserialize_model(model)
                step(model)
        if isinstance(model, onnx.ModelProto):
            onnx.save(model, str(out))
        else:
            save_model(model, out)
        return {}

    return build


def _weights(bits: int, block: int, accuracy_level: int | None = None) -> Callable[[Any], Any]:
    def step(model: Any) -> None:
        from edgeopt.passes import QuantizeWeightsPass

        QuantizeWeightsPass(bits=bits, block_size=block, accuracy_level=accuracy_level)(model)

    return step


def _dynamic_gather(model: Any) -> None:
    from edgeopt.passes import QuantizeDynamicPass

    QuantizeDynamicPass(op_types=("Gather",), per_channel=True)(model)


def _ort_dynamic_gather(proto: Any) -> Any:
    """ORT's dynamic (IntegerOps) quantizer on the Gathers only: int8 tables, DequantizeLinear after the lookup."""
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType

    quantizer = ONNXQuantizer(proto, True, False, QuantizationMode.IntegerOps, False, QuantType.QInt8,
                              QuantType.QUInt8, None, [], [], ["Gather"], {"WeightSymmetric": True})
    quantizer.quantize_model()
    return quantizer.model.model


_ort_dynamic_gather.on_proto = True  # type: ignore[attr-defined]


def _gather_blockwise(bits: int, block: int) -> Callable[[Any], Any]:
    """Block-quantize constant 2-D Gather tables (embeddings) to GatherBlockQuantized (com.microsoft).

    4 bits: ORT's MatMulNBitsQuantizer does it (``op_types_to_quantize=("Gather",)``), which
    edgeopt's QuantizeWeightsPass does not expose. 8 bits: the kernel takes uint8 data with
    ``bits=8``, but ORT's quantizer refuses 8-bit Gathers, so it is built here (asymmetric uint8,
    one scale and zero point per ``block`` values along the hidden axis).
    """

    def step(proto: Any) -> Any:
        if bits == 4:
            from onnxruntime.quantization import matmul_nbits_quantizer as nbits

            from edgeopt.passes.quantize_common import import_quietly

            import_quietly("onnxruntime.quantization.matmul_nbits_quantizer")
            config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, bits=4,
                                                        op_types_to_quantize=("Gather",),
                                                        quant_axes=(("Gather", 1),))
            quantizer = nbits.MatMulNBitsQuantizer(proto, bits=4, block_size=block, algo_config=config,
                                                   op_types_to_quantize=("Gather",), quant_axes=(("Gather", 1),))
            quantizer.process()
            return quantizer.model.model
        return _gather8(proto, block)

    step.on_proto = True  # type: ignore[attr-defined]
    return step


def _gather8(proto: Any, block: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if table is None or table.data_type != TensorProto.FLOAT or len(table.dims) != 2 or table.dims[1] < block:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table).astype(np.float32)
        rows, cols = w.shape
        nblocks = -(-cols // block)
        wp = np.pad(w, ((0, 0), (0, nblocks * block - cols))).reshape(rows, nblocks, block)
        low, high = np.minimum(wp.min(-1), 0), np.maximum(wp.max(-1), 0)
        scale = (high - low) / 255.0
        scale[scale == 0] = 1.0
        zp = np.clip(np.round(-low / scale), 0, 255)
        q = np.clip(np.round(wp / scale[..., None]) + zp[..., None], 0, 255).astype(np.uint8)
        q = q.reshape(rows, nblocks * block)[:, :cols]
        base = node.input[0]
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(q), base + "_q8"),
                                  numpy_helper.from_array(scale.astype(np.float32), base + "_scales"),
                                  numpy_helper.from_array(zp.astype(np.uint8), base + "_zero_points")])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        nodes.append(helper.make_node(
            "GatherBlockQuantized", [base + "_q8", node.input[1], base + "_scales", base + "_zero_points"],
            list(node.output), name=(node.name or base) + "_Q8", domain="com.microsoft",
            bits=8, block_size=block, quantize_axis=1, gather_axis=axis))
    used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name in used or i.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return proto


def _dynamic_fallback(ctx: Ctx, out: Path) -> dict[str, Any]:
    """Dynamic per-channel, then keep the most sensitive MatMuls float (library sensitivity + fallback)."""
    from edgeopt.core.model_io import load_model, save_model
    from edgeopt.passes import QuantizeDynamicPass
    from edgeopt.passes.quantize_common import prepare_for_quantization
    from edgeopt.quantization.analysis import fallback, sensitivity

    prepared = load_model(ctx.model)
    prepare_for_quantization(prepared)

    def emit(float_nodes: Any) -> Any:
        model = prepared.clone()
        QuantizeDynamicPass(per_channel=True, exclude=tuple(float_nodes))(model)
        return model

    evaluation = list(qm.FileFeeds(ctx.files))
    ranked = sensitivity(prepared, emit(()), evaluation)
    candidates = [e.node for e in ranked if e.op in ("MatMul", "Gemm") and e.introduced_db > 0]
    assert ctx.metric is not None
    result = fallback(emit, candidates, ctx.metric, float_score=ctx.metric(prepared), max_drop=ctx.case["max_drop"])
    save_model(result.model, out)
    return {"fallback": {"float_nodes": list(result.float_nodes), "evaluations": len(result.steps),
                         "score_on_calibration": result.score, "drop": result.drop}}


def _variants() -> dict[str, Variant]:
    v = [
        Variant("ort/static-qdq-pc-minmax", "ort", "static", _ort_static(True, "MinMax"),
                "quantize_static QDQ U8S8 per-channel MinMax"),
        Variant("ort/static-qdq-pt-minmax", "ort", "static", _ort_static(False, "MinMax"),
                "quantize_static QDQ U8S8 per-tensor MinMax"),
        Variant("ort/static-qdq-pc-percentile", "ort", "static", _ort_static(True, "Percentile"),
                "quantize_static QDQ U8S8 per-channel Percentile 99.999 (subprocess, memory cap)",
                isolate=True, quick=False),
        Variant("ort/static-qdq-pc-percentile-pad64", "ort", "static", _ort_static(True, "Percentile"),
                "as above, on the same sentences padded to 64 tokens in batches of 10 (it fails on unequal shapes)",
                isolate=True, quick=False, transformer_only=True, padded=True),
        Variant("ort/dynamic-pt", "ort", "dynamic", _ort_dynamic(False), "quantize_dynamic per-tensor"),
        Variant("ort/dynamic-pc", "ort", "dynamic", _ort_dynamic(True), "quantize_dynamic per-channel"),
        Variant("edgeopt/static-pc-minmax", "edgeopt", "static", _eo_file(method="minmax"),
                "QuantizeConfig(mode=static, method=minmax)"),
        Variant("edgeopt/static-pc-percentile", "edgeopt", "static", _eo_file(method="percentile"),
                "QuantizeConfig(method=percentile)"),
        Variant("edgeopt/static-pc-entropy", "edgeopt", "static", _eo_file(method="entropy"),
                "QuantizeConfig(method=entropy)", quick=False),
        Variant("edgeopt/static-pc-mse", "edgeopt", "static", _eo_file(method="mse"),
                "QuantizeConfig(method=mse)", quick=False),
        Variant("edgeopt/static-pc-minmax-maxdrop", "edgeopt", "static", _eo_file(method="minmax", fallback=True),
                "QuantizeConfig(method=minmax, max_drop=...) fallback on calibration data", quick=False),
        Variant("edgeopt/dynamic-pc", "edgeopt", "dynamic", _eo_file(mode="dynamic", per_channel=True),
                "QuantizeConfig(mode=dynamic, per_channel=True)"),
        Variant("edgeopt/wo8-b32", "edgeopt", "weight-only", _eo_file(mode="weight-only", bits=8, block_size=32),
                "QuantizeConfig(mode=weight-only, bits=8, block_size=32)", transformer_only=True, quick=False),
        Variant("edgeopt/wo8-b128", "edgeopt", "weight-only", _eo_file(mode="weight-only", bits=8, block_size=128),
                "QuantizeConfig(mode=weight-only, bits=8, block_size=128)", transformer_only=True),
        Variant("edgeopt-chain/wo8-b32-acc4", "edgeopt-chain", "weight-only", _eo_chain(_weights(8, 32, 4)),
                "QuantizeWeightsPass(bits=8, block_size=32, accuracy_level=4)", transformer_only=True, quick=False),
        Variant("edgeopt-chain/wo8-b128-acc4", "edgeopt-chain", "weight-only", _eo_chain(_weights(8, 128, 4)),
                "QuantizeWeightsPass(bits=8, block_size=128, accuracy_level=4)", transformer_only=True),
        Variant("edgeopt-chain/wo8-b128-acc4+dyn-gather", "edgeopt-chain", "weight-only",
                _eo_chain(_weights(8, 128, 4), _dynamic_gather),
                "QuantizeWeightsPass(8, 128, accuracy_level=4) then QuantizeDynamicPass(op_types=('Gather',))",
                transformer_only=True),
        Variant("edgeopt-chain/dynamic-pc+fallback", "edgeopt-chain", "dynamic", _dynamic_fallback,
                "QuantizeDynamicPass + sensitivity() + fallback() keeping sensitive MatMuls float",
                transformer_only=True, quick=False),
        Variant("bench-ext/wo8-b128+dyn-gather", "bench-ext", "weight-only",
                _eo_chain(_weights(8, 128), _ort_dynamic_gather),
                "weight-only int8 b128 (default accuracy level) + ORT dynamic int8 of the Gathers",
                transformer_only=True,
                quick=False),
        Variant("bench-ext/wo8-b128-acc4+dyn-gather", "bench-ext", "weight-only",
                _eo_chain(_weights(8, 128, 4), _ort_dynamic_gather),
                "weight-only int8 b128 acc4 + ORT dynamic int8 of the Gathers (what QuantizeDynamicPass("
                "op_types=('Gather',)) did before it became a no-op)", transformer_only=True),
        Variant("bench-ext/wo8-b128-acc4+gather8-b128", "bench-ext", "weight-only",
                _eo_chain(_weights(8, 128, 4), _gather_blockwise(8, 128)),
                "weight-only int8 b128 acc4 + embedding Gathers 8-bit block 128 (GatherBlockQuantized, built here)",
                transformer_only=True),
        Variant("bench-ext/wo8-b32-acc4+gather4-b16", "bench-ext", "weight-only",
                _eo_chain(_weights(8, 32, 4), _gather_blockwise(4, 16)),
                "weight-only int8 b32 acc4 + embedding Gathers 4-bit block 16 (ORT's quantizer; not exposed)",
                transformer_only=True),
        Variant("bench-ext/wo8-b128+gather4-b16", "bench-ext", "weight-only",
                _eo_chain(_weights(8, 128), _gather_blockwise(4, 16)),
                "weight-only int8 b128 (default accuracy level) + embedding Gathers 4-bit block 16",
                transformer_only=True, quick=False),
    ]
    return {x.key: x for x in v}


VARIANTS = _variants()


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------

def _tensor_mb(path: Path) -> float:
    """Initializer bytes (the payload; the file also holds nodes and, from edgeopt, inferred value_info)."""
    import onnx

    model = onnx.load(str(path))
    return sum(i.ByteSize() for i in model.graph.initializer) / 1e6


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()  # default graph optimizations (ORT_ENABLE_ALL)
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _outputs(session: Any, case: qm.ModelCase) -> np.ndarray:
    return np.concatenate([session.run([case.output], f)[0] for f in case.eval_feeds]).astype(np.float64)


def fidelity(ref: np.ndarray, got: np.ndarray, case: qm.ModelCase) -> dict[str, Any]:
    noise = float(((ref - got) ** 2).sum())
    out: dict[str, Any] = {"sqnr_db": math.inf if noise == 0 else 10 * math.log10(float((ref**2).sum()) / noise)}
    if case.kind == "classifier":
        out["top1_agreement"] = float((ref.argmax(1) == got.argmax(1)).mean())
        if case.labels is not None:
            out["accuracy"] = float((got.argmax(1) == case.labels).mean())
    else:
        cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-12)
        out["cos_mean"], out["cos_min"] = float(cos.mean()), float(cos.min())
    return out


def primary(case: qm.ModelCase, row: dict[str, Any]) -> tuple[float, float]:
    """What 'fidelity' ranks by: (top-1 agreement or mean cosine, SQNR)."""
    f = row["fidelity"]
    return (f["cos_mean"] if case.kind == "embedding" else f["top1_agreement"], f["sqnr_db"])


def latencies(sessions: dict[str, Any], feed: Feeds, runs: int, seed: int = 0) -> dict[str, float]:
    """Median batch-1 latency (ms) per session: warm-up, then rounds of 5 runs each in shuffled order."""
    for s in sessions.values():
        for _ in range(3):
            s.run(None, feed)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    order = list(sessions)
    rng = random.Random(seed)
    for _ in range(max(1, runs // 5)):
        rng.shuffle(order)
        for key in order:
            s = sessions[key]
            for _ in range(5):
                t = time.perf_counter()
                s.run(None, feed)
                times[key].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _embedding_metric(case: qm.ModelCase, files: list[Path]) -> Callable[[Any], float]:
    """Mean cosine of ``sentence_embedding`` vs fp32 on the calibration batches (for fallback)."""
    from edgeopt.core.runtime import create_session

    feeds = list(qm.FileFeeds(files))
    ref_session = _session(case.path, 0)
    refs = [ref_session.run([case.output], f)[0].astype(np.float64) for f in feeds]

    def score(model: Any) -> float:
        s = create_session(model, optimize=True)
        cos = []
        for f, r in zip(feeds, refs, strict=True):
            g = s.run([case.output], f)[0].astype(np.float64)
            cos.append((r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-12))
        return float(np.concatenate(cos).mean())

    return score


# --------------------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------------------

@dataclass
class Settings:
    quick: bool
    threads: int
    latency_runs: int
    calib_samples: int
    study_samples: tuple[int, ...]
    study: bool
    cap_gb: float
    study_methods: tuple[str, ...]
    minmax_repeats: int
    cache: Path
    work: Path
    only: tuple[str, ...] = ()


def bench_model(name: str, st: Settings, console: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    case = qm.build_case(name, st.cache, eval_samples=(50 if st.quick and name in ("minilm", "efficientnet")
                                                       else None), log=console.print)
    files = case.calib_files(st.calib_samples)
    console.print(f"[bold]{case.title}[/]: {case.path.name} ({case.path.stat().st_size / 1e6:.1f} MB), "
                  f"{st.calib_samples} calibration samples, {sum(len(next(iter(f.values()))) for f in case.eval_feeds)}"
                  f" held-out")
    case_info = {"name": case.name, "kind": case.kind, "output": case.output, "max_drop": case.max_drop,
                 "calib_samples": st.calib_samples}
    metric = _embedding_metric(case, files) if case.kind == "embedding" else None
    if metric is None:
        from edgeopt.core.model_io import load_model
        from edgeopt.quantization.analysis import agreement_metric

        float_model = load_model(case.path)
        metric = agreement_metric(float_model, list(qm.FileFeeds(files)))
    ctx = Ctx(case.path, files, case_info, metric)
    padded_ctx = Ctx(case.path, case.calib_files(st.calib_samples, padded=True), case_info, metric)
    out_dir = st.work / name
    out_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    for variant in VARIANTS.values():
        if variant.transformer_only and not case.transformer:
            continue
        if st.quick and not variant.quick:
            continue
        if st.only and not any(o in variant.key for o in st.only):
            continue
        out = out_dir / (variant.key.replace("/", "__") + ".onnx")
        out.unlink(missing_ok=True)
        row: dict[str, Any] = {"key": variant.key, "tool": variant.tool, "family": variant.family,
                               "note": variant.note, "ok": False}
        console.print(f"  quantizing {variant.key} ...", end="")
        started = time.perf_counter()
        try:
            if variant.isolate:
                job = {"kind": "quantize", "variant": variant.key, "model": str(case.path),
                       "files": [str(f) for f in (padded_ctx if variant.padded else ctx).files],
                       "case": case_info, "out": str(out)}
                res = run_child(job, st.cap_gb)
                row["child"] = {k: res.get(k) for k in ("peak_rss_mb", "base_rss_mb", "killed", "error")
                                if res.get(k) is not None}
                if not res.get("ok"):
                    raise RuntimeError(res.get("killed") or res.get("error"))
                row.update({k: res[k] for k in ("fallback", "calibration_s") if k in res})
            else:
                with contextlib.redirect_stdout(io.StringIO()):
                    row.update(variant.build(padded_ctx if variant.padded else ctx, out) or {})
            row["quantize_s"] = time.perf_counter() - started
            row["size_mb"] = out.stat().st_size / 1e6
            row["tensor_mb"] = _tensor_mb(out)
            row["path"] = str(out)
            row["ok"] = True
            console.print(f" {row['quantize_s']:.1f}s, {row['size_mb']:.2f} MB")
        except Exception as e:  # noqa: BLE001 - recorded, the bench goes on
            row["error"] = f"{type(e).__name__}: {e}"[:600]
            console.print(f" [red]failed[/]: {row['error'][:200]}")
        rows.append(row)

    # Fidelity and latency: every session built once, in this process.
    ref_session = _session(case.path, st.threads)
    ref = _outputs(ref_session, case)
    fp32: dict[str, Any] = {"size_mb": case.path.stat().st_size / 1e6, "tensor_mb": _tensor_mb(case.path)}
    if case.labels is not None:
        fp32["accuracy"] = float((ref.argmax(1) == case.labels).mean())
    sessions = {"fp32": ref_session}
    for row in rows:
        if not row["ok"]:
            continue
        try:
            session = _session(Path(row["path"]), st.threads)
            row["fidelity"] = fidelity(ref, _outputs(session, case), case)
            sessions[row["key"]] = session
        except Exception as e:  # noqa: BLE001
            row["ok"] = False
            row["error"] = f"runs in ORT: {type(e).__name__}: {e}"[:600]
    console.print(f"  latency: {len(sessions)} sessions x {st.latency_runs} runs ...")
    lat = latencies(sessions, case.latency_feed, st.latency_runs)
    fp32["latency_ms"] = lat["fp32"]
    for row in rows:
        if row["key"] in lat:
            row["latency_ms"] = lat[row["key"]]
            row["latency_ratio"] = lat[row["key"]] / lat["fp32"]
    del sessions, ref_session

    calib_rows = calibration_study(case, st, console) if st.study else []
    result = {"title": case.title, "model": str(case.path), "info": case.info, "fp32": fp32, "variants": rows,
              "calibration": calib_rows, "seconds": time.perf_counter() - t0}
    result["goals"] = goals(case, result)
    return result


def calibration_study(case: qm.ModelCase, st: Settings, console: Any) -> list[dict[str, Any]]:
    """Each calibrator alone in a fresh subprocess, per sample count; MinMax (both tools) is repeated
    ``st.minmax_repeats`` times, edgeopt and ORT alternating, and its fastest run is kept (the machine
    is shared: one run can land on a busy moment)."""
    methods = [(tool, m) for m in st.study_methods for tool in ("edgeopt", "ort")
               if not (tool == "ort" and m == "mse")]
    rows: list[dict[str, Any]] = []
    for tool, method in methods:
        for n in st.study_samples:
            row: dict[str, Any] = {"tool": tool, "method": method, "samples": n}
            small = next((r for r in rows if r["tool"] == tool and r["method"] == method and r.get("ok")), None)
            if small and tool == "ort" and method != "minmax":
                predicted = small["peak_rss_mb"] / 1024 + (small["peak_rss_mb"] - small["base_rss_mb"]) / 1024 * (
                    n / small["samples"] - 1)
                if predicted > st.cap_gb:
                    row.update(ok=False, skipped=f"predicted {predicted:.1f} GB > cap {st.cap_gb:.1f} GB "
                                                 f"(it keeps every activation)")
                    rows.append(row)
                    console.print(f"  calib {tool}/{method} @{n}: skipped ({row['skipped']})")
                    continue
            rows.append(row)
            _study_run(case, st, row, console)
    for _ in range(st.minmax_repeats - 1):
        for row in rows:
            if row["method"] == "minmax" and row.get("ok"):
                _study_run(case, st, row, console)
    return rows


def _study_run(case: qm.ModelCase, st: Settings, row: dict[str, Any], console: Any) -> None:
    tool, method, n = row["tool"], row["method"], row["samples"]
    job = {"kind": "calib", "tool": tool, "method": method, "model": str(case.path),
           "files": [str(f) for f in case.calib_files(n, padded=True)]}
    res = run_child(job, st.cap_gb)
    if row.get("ok") and res.get("ok"):  # a repeat: keep the fastest time and the highest peak
        row.setdefault("runs_s", [row["seconds"]]).append(res["seconds"])
        if res["seconds"] < row["seconds"]:
            row.update({k: res[k] for k in ("seconds", "calibrate_s", "prepare_s")})
        row["peak_rss_mb"] = max(row["peak_rss_mb"], res["peak_rss_mb"])
    else:
        row.update({k: res[k] for k in ("ok", "seconds", "calibrate_s", "prepare_s", "tensors", "peak_rss_mb",
                                        "base_rss_mb", "killed", "error", "wall_s") if k in res})
    if res.get("ok"):
        console.print(f"  calib {tool}/{method} @{n}: {res['seconds']:.1f}s, peak {res['peak_rss_mb']:.0f} MB")
    else:
        console.print(f"  calib {tool}/{method} @{n}: [red]{res.get('killed') or res.get('error', '')[-300:]}[/]")


# --------------------------------------------------------------------------------------------------
# Goals
# --------------------------------------------------------------------------------------------------

def goals(case: qm.ModelCase, result: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in result["variants"] if r.get("ok") and "fidelity" in r]
    ort_rows = [r for r in rows if r["tool"] == "ort"]
    lib = [r for r in rows if r["tool"] in ("edgeopt", "edgeopt-chain")]
    ext = [r for r in rows if r["tool"] == "bench-ext"]
    g: dict[str, Any] = {}
    if ort_rows:
        best = max(ort_rows, key=lambda r: primary(case, r))
        p_ort = primary(case, best)

        def check(cands: list[dict[str, Any]], tol: float) -> dict[str, Any]:
            # strict: file bytes <= ORT's; same size: initializer bytes <= ORT's + tol
            fit = [r for r in cands if (r["size_mb"] <= best["size_mb"] if tol == 0
                                        else r["tensor_mb"] <= best["tensor_mb"] * (1 + tol))]
            if not fit:
                return {"met": False, "why": "no config at that size"}
            top = max(fit, key=lambda r: primary(case, r))
            return {"met": primary(case, top) >= p_ort, "best": top["key"], "fidelity": primary(case, top),
                    "size_mb": top["size_mb"], "tensor_mb": top["tensor_mb"]}

        g["fidelity"] = {"ort_best": best["key"], "ort_fidelity": p_ort, "ort_size_mb": best["size_mb"],
                         "ort_tensor_mb": best["tensor_mb"],
                         "library_strict": check(lib, 0.0), "library_same_size": check(lib, SIZE_TOLERANCE),
                         "with_ext_strict": check(lib + ext, 0.0),
                         "with_ext_same_size": check(lib + ext, SIZE_TOLERANCE)}
    if case.kind == "embedding" and ort_rows:
        limit = g["fidelity"]["ort_tensor_mb"] * (1 + SIZE_TOLERANCE)

        def best_cos(cands: list[dict[str, Any]]) -> dict[str, Any]:
            fit = [r for r in cands if r["tensor_mb"] <= limit]
            if not fit:
                return {"met": False}
            top = max(fit, key=lambda r: r["fidelity"]["cos_mean"])
            return {"met": top["fidelity"]["cos_mean"] >= 0.998, "best": top["key"],
                    "cos_mean": top["fidelity"]["cos_mean"], "cos_min": top["fidelity"]["cos_min"],
                    "size_mb": top["size_mb"], "tensor_mb": top["tensor_mb"]}

        g["cosine_0998"] = {"library": best_cos(lib), "with_ext": best_cos(lib + ext),
                            "any_size_library": max(((r["key"], r["fidelity"]["cos_mean"], r["size_mb"]) for r in lib),
                                                    key=lambda t: t[1], default=None)}
    by_key = {r["key"]: r for r in rows}
    pairs = []
    for eo, ort in (("edgeopt/static-pc-minmax", "ort/static-qdq-pc-minmax"), ("edgeopt/dynamic-pc", "ort/dynamic-pc")):
        if eo in by_key and ort in by_key and "latency_ms" in by_key[eo] and "latency_ms" in by_key[ort]:
            ratio = by_key[eo]["latency_ms"] / by_key[ort]["latency_ms"]
            pairs.append({"edgeopt": eo, "ort": ort, "edgeopt_ms": by_key[eo]["latency_ms"],
                          "ort_ms": by_key[ort]["latency_ms"], "ratio": ratio, "met": ratio <= 1 + LATENCY_TOLERANCE})
    g["latency"] = pairs
    calib = [c for c in result["calibration"] if c.get("ok")]
    mem: list[dict[str, Any]] = []
    speed: list[dict[str, Any]] = []
    same_method: list[dict[str, Any]] = []
    for method in ("minmax", "percentile", "entropy", "mse"):
        runs = {c["samples"]: c for c in calib if c["tool"] == "edgeopt" and c["method"] == method}
        if len(runs) >= 2:
            lo, hi = min(runs), max(runs)
            ratio = runs[hi]["peak_rss_mb"] / runs[lo]["peak_rss_mb"]
            mem.append({"method": method, "samples": [lo, hi],
                        "peak_mb": [runs[lo]["peak_rss_mb"], runs[hi]["peak_rss_mb"]],
                        "ratio": ratio, "met": ratio <= MEMORY_RATIO_GOAL})
        for n, c in runs.items():
            base = next((o for o in calib if o["tool"] == "ort" and o["method"] == "minmax" and o["samples"] == n),
                        None)
            if base:
                speed.append({"method": method, "samples": n, "edgeopt_s": c["seconds"],
                              "ort_minmax_s": base["seconds"], "ratio": c["seconds"] / base["seconds"],
                              "met": c["seconds"] <= base["seconds"]})
            same = next((o for o in calib if o["tool"] == "ort" and o["method"] == method and o["samples"] == n),
                        None)
            if same and method != "minmax":
                same_method.append({"method": method, "samples": n, "edgeopt_s": c["seconds"], "ort_s": same["seconds"],
                                    "edgeopt_peak_mb": c["peak_rss_mb"], "ort_peak_mb": same["peak_rss_mb"]})
    g["calibration_memory"] = mem
    g["calibration_time"] = speed
    g["calibration_vs_ort_same_method"] = same_method
    return g


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return format(x, spec)


def _size(mb: float) -> str:
    return f"{mb:.2f} MB" if mb >= 10 else f"{mb:.3f} MB" if mb >= 1 else f"{mb * 1000:.1f} kB"


def render(name: str, res: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    case_kind = "embedding" if any("cos_mean" in r.get("fidelity", {}) for r in res["variants"]) else "classifier"
    labels = "accuracy" in res["fp32"]
    t = Table(title=f"{res['title']} — fp32 {_size(res['fp32']['size_mb'])}, "
                    f"{res['fp32']['latency_ms']:.2f} ms"
                    + (f", accuracy {res['fp32']['accuracy']:.4f}" if labels else ""),
              title_justify="left")
    t.add_column("config")
    t.add_column("file", justify="right")
    t.add_column("weights", justify="right")
    t.add_column("SQNR dB", justify="right")
    if case_kind == "embedding":
        t.add_column("cos mean", justify="right")
        t.add_column("cos min", justify="right")
    else:
        t.add_column("top-1 agr", justify="right")
    if labels:
        t.add_column("accuracy", justify="right")
    t.add_column("lat ms", justify="right")
    t.add_column("x fp32", justify="right")
    t.add_column("quant s", justify="right")
    t.add_column("notes")
    for r in res["variants"]:
        if not r.get("ok"):
            cells = [r["key"], "-", "-", "-"] + ["-"] * (2 if case_kind == "embedding" else 1)
            cells += ["-"] if labels else []
            t.add_row(*cells, "-", "-", "-", f"[red]{r.get('error', '')[:70]}[/]")
            continue
        f = r["fidelity"]
        cells = [r["key"], _size(r["size_mb"]), _size(r["tensor_mb"]), _fmt(f["sqnr_db"], ".1f")]
        cells += [_fmt(f["cos_mean"], ".5f"), _fmt(f["cos_min"], ".5f")] if case_kind == "embedding" else \
            [_fmt(f["top1_agreement"], ".4f")]
        if labels:
            cells.append(_fmt(f.get("accuracy"), ".4f"))
        note = ""
        if "fallback" in r:
            note = f"{len(r['fallback']['float_nodes'])} node(s) float, {r['fallback']['evaluations']} evals"
        if "child" in r and r["child"].get("peak_rss_mb"):
            note = (note + " " if note else "") + f"peak {r['child']['peak_rss_mb']:.0f} MB"
        cells += [_fmt(r.get("latency_ms"), ".2f"), _fmt(r.get("latency_ratio"), ".2f"), _fmt(r["quantize_s"], ".1f"),
                  note]
        t.add_row(*cells)
    console.print(t)
    if res["calibration"]:
        c = Table(title=f"{name}: calibration alone, fresh subprocess each (wall s, peak RSS MB)", title_justify="left")
        for col in ("tool", "method", "samples", "total s", "calibrate s", "peak MB", "baseline MB", "tensors",
                    "notes"):
            c.add_column(col, justify="left" if col in ("tool", "method", "notes") else "right")
        for r in res["calibration"]:
            if r.get("ok"):
                c.add_row(r["tool"], r["method"], str(r["samples"]), f"{r['seconds']:.1f}", f"{r['calibrate_s']:.1f}",
                          f"{r['peak_rss_mb']:.0f}", f"{r['base_rss_mb']:.0f}", str(r.get("tensors", "")), "")
            else:
                c.add_row(r["tool"], r["method"], str(r["samples"]), "-", "-", _fmt(r.get("peak_rss_mb"), ".0f"),
                          "-", "-",
                          (r.get("skipped") or r.get("killed") or r.get("error", ""))[-90:])
        console.print(c)


def goal_lines(name: str, g: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    lines: list[tuple[str, bool | None, str]] = []
    if "fidelity" in g:
        f = g["fidelity"]
        ort = (f"ORT best {f['ort_best']} ({f['ort_fidelity'][0]:.5f}, {f['ort_fidelity'][1]:.1f} dB, "
               f"file {_size(f['ort_size_mb'])}, weights {_size(f['ort_tensor_mb'])})")
        for label, key in (("file <= ORT's", "library_strict"), (f"weights <= ORT's +{SIZE_TOLERANCE:.0%}",
                                                                 "library_same_size")):
            r = f[key]
            detail = (f"{r['best']} ({r['fidelity'][0]:.5f}, {r['fidelity'][1]:.1f} dB, file {_size(r['size_mb'])}, "
                      f"weights {_size(r['tensor_mb'])})") if "best" in r else r.get("why", "")
            lines.append((f"fidelity >= ORT best, {label}", r["met"], f"{detail} vs {ort}"))
        for label, key in (("file <= ORT's", "with_ext_strict"), (f"weights <= ORT's +{SIZE_TOLERANCE:.0%}",
                                                                  "with_ext_same_size")):
            r = f[key]
            if "best" in r and r["best"].startswith("bench-ext"):
                lines.append((f"  (with library change) {label}", r["met"],
                              f"{r['best']} ({r['fidelity'][0]:.5f}, {r['fidelity'][1]:.1f} dB, "
                              f"file {_size(r['size_mb'])}, weights {_size(r['tensor_mb'])})"))
    if "cosine_0998" in g:
        for label, key in (("library", "library"), ("with library change", "with_ext")):
            r = g["cosine_0998"][key]
            detail = (f"{r['best']}: {r['cos_mean']:.5f} / min {r['cos_min']:.5f}, file {_size(r['size_mb'])}, "
                      f"weights {_size(r['tensor_mb'])}") if "best" in r else "-"
            lines.append((f"mean cosine >= 0.998, weights <= ORT best's +{SIZE_TOLERANCE:.0%} ({label})", r["met"],
                          detail))
    for p in g.get("latency", []):
        lines.append((f"latency {p['edgeopt'].split('/')[1]} <= ORT {p['ort'].split('/')[1]}", p["met"],
                      f"{p['edgeopt_ms']:.2f} ms vs {p['ort_ms']:.2f} ms (x{p['ratio']:.2f})"))
    for m in g.get("calibration_memory", []):
        lines.append((f"calib memory {m['method']} @{m['samples'][1]} <= {MEMORY_RATIO_GOAL}x @{m['samples'][0]}",
                      m["met"],
                      f"{m['peak_mb'][1]:.0f} MB vs {m['peak_mb'][0]:.0f} MB (x{m['ratio']:.2f})"))
    for s in g.get("calibration_vs_ort_same_method", []):
        lines.append((f"  (info) calib {s['method']} @{s['samples']} vs ORT {s['method']}", None,
                      f"{s['edgeopt_s']:.1f}s / {s['edgeopt_peak_mb']:.0f} MB vs {s['ort_s']:.1f}s / "
                      f"{s['ort_peak_mb']:.0f} MB"))
    for s in g.get("calibration_time", []):
        lines.append((f"calib time {s['method']} @{s['samples']} <= ORT MinMax", s["met"],
                      f"{s['edgeopt_s']:.1f}s vs {s['ort_minmax_s']:.1f}s (x{s['ratio']:.2f})"))
    return lines


def render_goals(results: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title="Goals from the quantization issue", title_justify="left")
    t.add_column("model")
    t.add_column("goal")
    t.add_column("status")
    t.add_column("numbers")
    for name, res in results.items():
        if "goals" not in res:
            continue
        for goal, met, detail in goal_lines(name, res["goals"]):
            status = "-" if met is None else ("[green]met[/]" if met else "[red]NOT met[/]")
            t.add_row(name, goal, status, detail)
    console.print(t)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(qm.MODELS), help=f"comma-separated: {', '.join(qm.MODELS)}")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--quick", action="store_true", help="fewer configs, smaller held-out sets, minmax-only study")
    parser.add_argument("--threads", type=int, default=1,
                        help="ORT intra-op threads for fidelity/latency sessions (0 = ORT's default)")
    parser.add_argument("--latency-runs", type=int, default=None, help="timed runs per config (default 100, quick 30)")
    parser.add_argument("--calib-samples", type=int, default=100, help="calibration samples for the quantized models")
    parser.add_argument("--study-samples", default="100,1000", help="sample counts of the calibration study")
    parser.add_argument("--no-calib-study", action="store_true", help="skip the subprocess calibration study")
    parser.add_argument("--study-methods", default=None,
                        help="calibration methods of the study (default minmax,percentile,entropy,mse; quick: minmax)")
    parser.add_argument("--minmax-repeats", type=int, default=None,
                        help="runs of each MinMax calibration in the study, fastest kept (default 2, quick 1)")
    parser.add_argument("--mem-cap-gb", type=float, default=None,
                        help="kill a subprocess above this RSS (default: min(8, 50%% of MemAvailable))")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only matching configs")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child is not None:
        child_main(json.loads(args._child))
        return 0

    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from rich.console import Console

    console = Console(width=200)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in qm.MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(qm.MODELS)}")
    cap = args.mem_cap_gb if args.mem_cap_gb is not None else min(8.0, 0.5 * _mem_available_gb())
    study_samples = tuple(int(s) for s in args.study_samples.split(","))
    st = Settings(quick=args.quick, threads=args.threads,
                  latency_runs=args.latency_runs or (30 if args.quick else 100), calib_samples=args.calib_samples,
                  study_samples=study_samples, study=not args.no_calib_study, cap_gb=cap,
                  study_methods=tuple((args.study_methods or ("minmax" if args.quick else
                                                              "minmax,percentile,entropy,mse")).split(",")),
                  minmax_repeats=args.minmax_repeats or (1 if args.quick else 2), cache=args.cache_dir,
                  work=args.cache_dir / "quantized", only=tuple(o for o in args.only.split(",") if o))
    import onnxruntime as ort

    import edgeopt

    meta = {"python": platform.python_version(), "onnxruntime": ort.__version__,
            "edgeopt": getattr(edgeopt, "__version__", "dev"), "cpu_count": os.cpu_count(),
            "threads": st.threads, "quick": st.quick, "calib_samples": st.calib_samples,
            "study_samples": list(study_samples), "study_methods": list(st.study_methods),
            "minmax_repeats": st.minmax_repeats, "mem_cap_gb": cap, "latency_runs": st.latency_runs,
            "size_tolerance": SIZE_TOLERANCE, "latency_tolerance": LATENCY_TOLERANCE,
            "load_average_start": os.getloadavg()}
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in models:
        try:
            study = st.study and not (st.quick and name in ("efficientnet", "minilm"))  # quick: < 3 min
            res = bench_model(name, Settings(**{**asdict(st), "study": study}), console)
            render(name, res, console)
            results[name] = res
        except qm.pretrained.MissingModelPackage as e:
            console.print(f"[yellow]{name} skipped[/]: {e}")
            results[name] = {"skipped": str(e)}
        except Exception as e:  # noqa: BLE001 - the other models still run
            console.print(f"[red]{name} failed[/]: {type(e).__name__}: {e}")
            results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta["seconds"] = time.perf_counter() - started
        meta["load_average_end"] = os.getloadavg()
        args.json.write_text(json.dumps(_jsonable({"meta": meta, "models": results}), indent=1))
    render_goals(results, console)
    console.print(f"total {time.perf_counter() - started:.0f}s; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
