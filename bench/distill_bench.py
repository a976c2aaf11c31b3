"""Distillation of a pruned EfficientNet-Lite0 from the original on unlabeled crops (issue 13's CNN goal).

The student is the CLI's ``prune --ratio R`` (with least-squares repair on the
training crops unless ``--no-repair``); it is distilled with ``edgeopt distill``'s
library function on N crops and scored, in ONNX Runtime, on M other crops (another
seed) that neither pruning nor training saw. Prints one JSON line.

    python bench/distill_bench.py --crops 600 --unseen 200 --time-limit 300
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


def _agreement(student: Path, teacher: Path, x: np.ndarray) -> float:
    s, t = create_session(student), create_session(teacher)
    agree = 0
    for i in range(0, len(x), 32):
        feeds = {pretrained.CNN_INPUT: x[i:i + 32]}
        agree += int((s.run(None, feeds)[0].argmax(1) == t.run(None, feeds)[0].argmax(1)).sum())
    return agree / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=600)
    parser.add_argument("--unseen", type=int, default=200)
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--no-repair", action="store_true")
    parser.add_argument("--time-limit", type=float, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    cache = ROOT / "bench" / "results" / "quantize-cache"
    teacher, _ = pretrained.pretrained_cnn_onnx(cache)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "crops"
        data.mkdir()
        train = pretrained.efficientnet_lite0_feeds(pretrained.sample_images(args.crops, seed=0))
        for i in range(0, args.crops, 50):
            np.savez(data / f"batch_{i:04d}.npz", input=train[pretrained.CNN_INPUT][i:i + 50])
        del train
        student = Path(tmp) / "pruned.onnx"
        prune = [str(Path(sys.executable).with_name("edgeopt")), "prune", str(teacher), "-o", str(student),
                 "--ratio", str(args.ratio)]
        prune += ["--no-repair"] if args.no_repair else ["--calib", str(data), "--samples", "200"]
        subprocess.run(prune, check=True, capture_output=True)
        unseen = pretrained.efficientnet_lite0_feeds(pretrained.sample_images(args.unseen, seed=1))
        x = unseen[pretrained.CNN_INPUT]
        before = _agreement(student, teacher, x)
        start = time.perf_counter()
        result = distill_file(student, teacher, str(data), Path(tmp) / "distilled.onnx",
                              DistillConfig(time_limit=args.time_limit, lr=args.lr, batch_size=args.batch_size,
                                            eval_every=10, epochs=100))
        seconds = time.perf_counter() - start
        after = _agreement(Path(tmp) / "distilled.onnx", teacher, x)
    print(json.dumps({"model": "EfficientNet-Lite0", "ratio": args.ratio, "repair": not args.no_repair,
                      "crops": args.crops, "unseen": args.unseen, "lr": args.lr, "batch_size": args.batch_size,
                      "unseen_agreement_before": before, "unseen_agreement_after": after,
                      "holdout_before": result.before.metric, "holdout_after": result.after.metric,
                      "steps": result.steps, "best_step": result.best_step, "stopped": result.stopped,
                      "seconds": round(seconds, 1), "history": result.history}))


if __name__ == "__main__":
    main()
