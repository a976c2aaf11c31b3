"""Structured pruning benchmark: edgeopt on the ONNX graph vs Torch-Pruning on the PyTorch module.

Side by side in one run, at channel ratios 10/20/30/50% (criterion L1, uniform, kept
channels rounded up to multiples of 8, no fine-tuning):

- ``resdw``: a MobileNetV2-style residual CNN with depthwise convs trained here on digits
  (``bench/prune_models.py``), so accuracy can be measured. Also pruned by Torch-Pruning
  (``MetaPruner`` + ``MagnitudeImportance(p=1)``, same ratio and rounding, classifier
  ignored), exported and cleaned up the same way.
- ``efficientnet-lite0``: the real pretrained ImageNet model (``bench/pretrained.py``);
  fidelity is top-1 agreement with the fp32 model on crops of scikit-learn's sample photos.
- ``minilm``: all-MiniLM-L6-v2 (pretrained, 6 layers); its FFN neurons are pruned
  (``kinds="channels"``); fidelity is the mean cosine of the sentence embeddings with fp32.
- ``minilm-heads``: the same model with 1/4 and 1/2 of its attention heads pruned (12 -> 9 and
  12 -> 6 heads per layer: Q/K/V output features in blocks of 32, the O projection's rows).

Every edgeopt point is measured without and with ``repair`` (least-squares refit on
calibration data); kept counts are rounded *down* to multiples of 8 for resdw and MiniLM, as Torch-Pruning
rounds, so both keep the same channel counts (EfficientNet-Lite0, whose groups of 16-40
channels would lose up to half at 10%, uses edgeopt's default: up). Latency: ONNX
Runtime CPU, all graph optimizations, 1 thread, the original and the pruned model timed in
alternating rounds in the same process; medians.

    pip install torch-pruning   # benchmark only, not a dependency of edgeopt
    python bench/prune_bench.py [--quick] [--out bench/results/prune.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
import pretrained  # noqa: E402
import prune_models  # noqa: E402

from edgeopt.core.inspect_model import summarize  # noqa: E402
from edgeopt.core.model_io import load_model, save_model  # noqa: E402
from edgeopt.passes import PruneChannelsPass  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CACHE = RESULTS / "prune-cache"
Feeds = dict[str, np.ndarray]
Metric = Callable[[ort.InferenceSession], float]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_pair(base: ort.InferenceSession, other: ort.InferenceSession, feed: Feeds, *, rounds: int,
                 per_round: int = 5) -> tuple[float, float]:
    """Median ms of ``base`` and ``other`` on ``feed``, timed in alternating rounds."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for sess in (base, other):
        for _ in range(3):
            sess.run(None, feed)
    for _ in range(rounds):
        for key, sess in ((0, base), (1, other)):
            for _ in range(per_round):
                start = time.perf_counter()
                sess.run(None, feed)
                times[key].append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def row(name: str, path: Path, base: Path, metric: Metric, feed: Feeds, rounds: int) -> dict[str, Any]:
    summary = summarize(load_model(path))
    base_sess, sess = session(base), session(path)
    base_ms, ms = latency_pair(base_sess, sess, feed, rounds=rounds)
    return {"variant": name, "params": summary.parameters, "macs": summary.macs, "file_bytes": path.stat().st_size,
            "latency_ms": round(ms, 3), "base_latency_ms": round(base_ms, 3), "latency_ratio": round(ms / base_ms, 3),
            "metric": round(metric(sess), 4)}


def prune_onnx(base: Path, out: Path, ratio: float, *, repair: bool, calibration: Iterable[Feeds],
               criterion: str = "l1", rounding: str = "down", kinds: str = "all") -> Path:
    model = load_model(base)
    PruneChannelsPass(ratio=ratio, criterion=criterion, round_to=8, rounding=rounding, repair=repair,  # type: ignore[arg-type]
                      kinds=kinds,  # type: ignore[arg-type]
                      calibration=calibration if repair or criterion == "activation" else None)(model)
    return save_model(model, out)


def _sweep(case: str, base: Path, ratios: list[float], metric: Metric, feed: Feeds, calibration: list[Feeds],
           rounds: int, extra: Callable[[float], Path] | None = None,
           variants: tuple[tuple[str, bool], ...] = (("l1", False), ("l1", True)),
           rounding: str = "down", kinds: str = "all") -> list[dict[str, Any]]:
    rows = [row("original", base, base, metric, feed, rounds)]
    print(f"{case}: original {rows[0]}", flush=True)
    for ratio in ratios:
        for criterion, repair in variants:
            name = f"edgeopt {criterion} {ratio:.0%}{' +repair' if repair else ''}"
            started = time.perf_counter()
            path = prune_onnx(base, CACHE / f"{case}-{criterion}-{ratio}-{int(repair)}.onnx", ratio, repair=repair,
                              calibration=calibration, criterion=criterion, rounding=rounding, kinds=kinds)
            rows.append({**row(name, path, base, metric, feed, rounds),
                         "prune_seconds": round(time.perf_counter() - started, 2)})
            print(f"{case}: {rows[-1]}", flush=True)
        if extra is not None:
            rows.append(row(f"torch-pruning {ratio:.0%}", extra(ratio), base, metric, feed, rounds))
            print(f"{case}: {rows[-1]}", flush=True)
    return rows


def resdw_case(ratios: list[float], rounds: int) -> list[dict[str, Any]]:
    import torch
    import torch_pruning as tp

    from edgeopt.cli.demo_model import load_data

    model, info = prune_models.trained(CACHE)
    print(f"resdw: {info}", flush=True)
    base = prune_models.export_onnx(model, CACHE / "resdw.onnx")
    data = load_data()
    x_val, y_val = prune_models.upsample(data.x_val), data.y_val
    x_train = prune_models.upsample(data.x_train[:512])
    calibration = [{"image": x_train[i:i + 64]} for i in range(0, 512, 64)]

    def accuracy(sess: ort.InferenceSession) -> float:
        return float((sess.run(None, {"image": x_val})[0].argmax(1) == y_val).mean())

    def torch_pruning(ratio: float) -> Path:
        pruned = copy.deepcopy(model).eval()
        pruner = tp.pruner.MetaPruner(pruned, torch.zeros(1, 1, prune_models.SIZE, prune_models.SIZE),
                                      importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                      ignored_layers=[pruned.fc], round_to=8, global_pruning=False)
        pruner.step()
        return prune_models.export_onnx(pruned, CACHE / f"resdw-tp-{ratio}.onnx")

    return _sweep("resdw", base, ratios, accuracy, {"image": x_val[:32]}, calibration, rounds, torch_pruning)


def efficientnet_case(ratios: list[float], rounds: int, n_eval: int) -> list[dict[str, Any]]:
    base, _ = pretrained.pretrained_cnn_onnx(RESULTS / "pretrained-cache", "efficientnet-lite0")
    images = pretrained.efficientnet_lite0_feeds(pretrained.sample_images(n_eval, seed=7))["input"]
    calibration = [pretrained.efficientnet_lite0_feeds(pretrained.sample_images(16, seed=1000 + i))
                   for i in range(4)]
    reference = np.concatenate([session(base).run(None, {"input": images[i:i + 16]})[0]
                                for i in range(0, n_eval, 16)]).argmax(1)

    def agreement(sess: ort.InferenceSession) -> float:
        got = np.concatenate([sess.run(None, {"input": images[i:i + 16]})[0] for i in range(0, n_eval, 16)])
        return float((got.argmax(1) == reference).mean())

    return _sweep("efficientnet-lite0", base, ratios, agreement, {"input": images[:1]}, calibration, rounds,
                  variants=(("l1", False), ("l1", True), ("activation", True)), rounding="up")


def minilm_case(ratios: list[float], rounds: int, n_eval: int, kinds: str = "channels") -> list[dict[str, Any]]:
    """MiniLM's FFN neurons (``kinds="channels"``) or whole attention heads (``kinds="heads"``)."""
    base, _ = pretrained.minilm_onnx(RESULTS / "pretrained-cache", seq_len=None)
    tokenize = pretrained.minilm_tokenizer(64)
    texts = pretrained.sentences(256 + n_eval)
    calibration = [tokenize(texts[i:i + 16]) for i in range(0, 256, 16)]
    held = [tokenize(texts[256 + i:256 + i + 16]) for i in range(0, n_eval, 16)]
    names = [o.name for o in session(base).get_outputs()]
    out = names.index("sentence_embedding")
    reference = [session(base).run(None, f)[out] for f in held]

    def cosine(sess: ort.InferenceSession) -> float:
        sims = []
        for feeds, ref in zip(held, reference, strict=True):
            got = sess.run(None, feeds)[out]
            sims.append(np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)))
        return float(np.mean(np.concatenate(sims)))

    return _sweep("minilm" if kinds == "channels" else f"minilm-{kinds}", base, ratios, cosine, tokenize(texts[:1]),
                  calibration, rounds, variants=(("l1", False), ("l1", True), ("activation", True)), kinds=kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30%% only, fewer eval samples and timing rounds")
    parser.add_argument("--cases", default="resdw,efficientnet-lite0,minilm,minilm-heads")
    parser.add_argument("--out", type=Path, default=RESULTS / "prune.json")
    args = parser.parse_args()
    ratios = [0.3] if args.quick else [0.1, 0.2, 0.3, 0.5]
    rounds, n_eval = (5, 64) if args.quick else (15, 256)
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update({"ratios": ratios, "round_to": 8, "threads": 1,
                    "rounding": "down (as Torch-Pruning) except efficientnet-lite0: up"})
    runners: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "resdw": lambda: resdw_case(ratios, rounds),
        "efficientnet-lite0": lambda: efficientnet_case(ratios, rounds, n_eval),
        "minilm": lambda: minilm_case(ratios, rounds, n_eval),
        "minilm-heads": lambda: minilm_case([0.25] if args.quick else [0.25, 0.5], rounds, n_eval, kinds="heads"),
    }
    for case in args.cases.split(","):
        results[case] = runners[case]()
        args.out.write_text(json.dumps(results, indent=1))  # after each case: a partial run keeps its numbers
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
