"""Distillation of compressed pretrained models from the originals on unlabeled samples (issue 13's goals).

``--model efficientnet``: EfficientNet-Lite0 on N crops, scored by top-1 agreement;
``--model minilm``: all-MiniLM-L6-v2 (64 tokens) on N sentences, scored by the cosine of
``sentence_embedding``. The student (``--student``) is made by the edgeopt command:

- ``prune`` (efficientnet's default): ``edgeopt prune --ratio R``;
- ``drop-layers`` (minilm's default): ``edgeopt drop-layers --count K``;
- ``int8`` / ``int8-per-channel``: ``edgeopt quantize`` static int8 with per-tensor / per-channel
  weights, trained by QAT;
- ``clusters``: ``edgeopt share-weights --clusters C`` (codebook form), trained cluster-preserving.

Pruning and dropping repair by least squares on the training samples unless ``--no-repair``;
calibration uses 200 training samples (share-weights: data-aware codebooks, unless
``--plain-clusters``). The student is distilled with ``edgeopt distill``'s library function and
scored, in ONNX Runtime (graph optimizations off, so int8 is ORT's simulation), on M other samples
that neither compression nor training saw. Prints one JSON line.

    python bench/distill_bench.py --model efficientnet --samples 600 --unseen 200 --time-limit 300
    python bench/distill_bench.py --model minilm --samples 2000 --unseen 200 --time-limit 600 --lr 5e-5
    python bench/distill_bench.py --model efficientnet --student int8 --samples 1000 --time-limit 900
    python bench/distill_bench.py --model minilm --student clusters --samples 2000 --time-limit 900 --lr 1e-4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt.core.runtime import create_session
from edgeopt.training import DistillConfig, distill_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import pretrained  # noqa: E402 - bench/ is not a package


def _agreement(student: Path, teacher: Path, feeds: dict[str, np.ndarray], output: str) -> float:
    s, t = create_session(student), create_session(teacher)
    total, rows = 0.0, len(next(iter(feeds.values())))
    for i in range(0, rows, 32):
        batch = {k: v[i:i + 32] for k, v in feeds.items()}
        got, want = s.run([output], batch)[0], t.run([output], batch)[0]
        if output == "logits":
            total += float((got.argmax(1) == want.argmax(1)).sum())
        else:
            cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
            total += float(cos.sum())
    return total / rows


def _distinct_values(path: Path, feeds: dict[str, np.ndarray]) -> list[int]:
    """Distinct values of each codebook-decoded weight of ``path``, as ONNX Runtime decodes them (min, max)."""
    import onnx

    proto = onnx.load(str(path))
    decoded = sorted({o for node in proto.graph.node for o in node.output if o.endswith("_decoded")})
    if not decoded:
        return []
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in decoded)
    session = create_session(proto)
    counts = [int(np.unique(a).size) for a in session.run(decoded, {k: v[:1] for k, v in feeds.items()})]
    return [min(counts), max(counts), len(counts)]


def _data(model: str, n: int, seed: int) -> dict[str, np.ndarray]:
    if model == "efficientnet":
        return pretrained.efficientnet_lite0_feeds(pretrained.sample_images(n, seed=seed))
    texts = pretrained.sentences(n + 10_000 * seed)[10_000 * seed:]
    return pretrained.minilm_tokenizer(64)(texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("efficientnet", "minilm"), default="efficientnet")
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--unseen", type=int, default=200)
    parser.add_argument("--ratio", type=float, default=0.3, help="efficientnet: channels pruned")
    parser.add_argument("--count", type=int, default=2, help="minilm: layers dropped")
    parser.add_argument("--scope", choices=("uniform", "global"), default="uniform", help="prune: channel ranking")
    parser.add_argument("--student", choices=("prune", "drop-layers", "int8", "int8-per-channel", "clusters"))
    parser.add_argument("--clusters", type=int, default=16)
    parser.add_argument("--plain-clusters", action="store_true", help="clusters: k-means without calibration data")
    parser.add_argument("--learn-assignments", action="store_true", help="clusters: learn which centroid each "
                        "weight takes, not only the centroids")
    parser.add_argument("--scale-lr", type=float, default=None)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--features", type=int, default=0, help="intermediate tensors to match")
    parser.add_argument("--no-repair", action="store_true")
    parser.add_argument("--time-limit", type=float, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--augment", default="none", help="distill's --augment (auto: crop+flip for images)")
    parser.add_argument("--ema", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--loss", default="auto", help="distill's --loss (auto: KL for logits)")
    parser.add_argument("--blockwise", type=float, default=0.0, help="seconds of block-wise reconstruction first")
    parser.add_argument("--block-lr", type=float, default=None)
    args = parser.parse_args()
    cache = ROOT / "bench" / "results" / "quantize-cache"
    if args.model == "efficientnet":
        teacher, output = pretrained.pretrained_cnn_onnx(cache)[0], "logits"
    else:
        teacher, output = pretrained.minilm_onnx(cache, seq_len=64)[0], "sentence_embedding"
    student_kind = args.student or ("prune" if args.model == "efficientnet" else "drop-layers")
    compress = {
        "prune": ["prune", "--ratio", str(args.ratio), "--scope", args.scope],
        "drop-layers": ["drop-layers", "--count", str(args.count), "--compare-output", output],
        "int8": ["quantize", "--per-tensor"],
        "int8-per-channel": ["quantize", "--per-channel"],
        "clusters": ["share-weights", "--clusters", str(args.clusters)],
    }[student_kind]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "samples"
        data.mkdir()
        train = _data(args.model, args.samples, seed=0)
        for i in range(0, args.samples, 50):
            np.savez(data / f"batch_{i:04d}.npz", **{k: v[i:i + 50] for k, v in train.items()})  # type: ignore[arg-type]
        del train
        student = Path(tmp) / "student.onnx"
        command = [str(Path(sys.executable).with_name("edgeopt")), compress[0], str(teacher), "-o", str(student),
                   *compress[1:]]
        if compress[0] in ("prune", "drop-layers"):
            command += ["--no-repair"] if args.no_repair else ["--calib", str(data), "--samples", "200"]
        elif compress[0] == "quantize" or compress[0] == "share-weights" and not args.plain_clusters:
            command += ["--calib", str(data), "--samples", "200"]  # share-weights: data-aware codebooks
        subprocess.run(command, check=True, capture_output=True)
        unseen = _data(args.model, args.unseen, seed=1)
        before = _agreement(student, teacher, unseen, output)
        start = time.perf_counter()
        result = distill_file(student, teacher, str(data), Path(tmp) / "distilled.onnx",
                              DistillConfig(time_limit=args.time_limit, lr=args.lr, batch_size=args.batch_size,
                                            eval_every=args.eval_every, patience=args.patience, epochs=100,
                                            output=output, scale_lr=args.scale_lr, features=args.features,
                                            learn_assignments=args.learn_assignments, augment=args.augment,
                                            ema=args.ema, temperature=args.temperature, loss=args.loss,
                                            blockwise=args.blockwise, block_lr=args.block_lr))
        seconds = time.perf_counter() - start
        after = _agreement(Path(tmp) / "distilled.onnx", teacher, unseen, output)
        distinct = _distinct_values(Path(tmp) / "distilled.onnx", unseen)
    compressed = [c if c != str(data) else "SAMPLES" for c in command[1:2] + command[5:]]  # no input/output paths
    print(json.dumps({"model": args.model, "compress": compressed, "repair": not args.no_repair,
                      "scale_lr": args.scale_lr, "patience": args.patience,
                      "learn_assignments": args.learn_assignments, "features": result.features,
                      "samples": args.samples, "unseen": args.unseen, "lr": args.lr, "batch_size": args.batch_size,
                      "augment": args.augment, "ema": args.ema, "temperature": args.temperature,
                      "blockwise": args.blockwise, "block_lr": args.block_lr, "blocks": result.blocks,
                      "metric": result.objective.metric, "loss": result.objective.loss,
                      "unseen_before": before, "unseen_after": after,
                      "distinct_values_min_max_tensors": distinct,
                      "holdout_before": result.before.metric, "holdout_after": result.after.metric,
                      "steps": result.steps, "best_step": result.best_step, "stopped": result.stopped,
                      "seconds": round(seconds, 1), "history": result.history}))


if __name__ == "__main__":
    main()
