"""``edgeopt search`` on the shipped digits CNN: the winner against static int8 alone, same run.

    python bench/search_bench.py --trials 40 --objective size --max-drop 0.01 --out out/search_bench
    python bench/search_bench.py --trials 16 --workers 2   # the same through a local Ray (time it against 1)

Calibration: 256 training images; validation: the 360 held-out digits with labels
(accuracy). Prints one JSON line per objective: trials, time, computed vs cached,
the winner and the int8-only seed (size, p50 latency, accuracy drop) and the ratio.
A cold cache (``EDGEOPT_CACHE_DIR`` pointed at a fresh folder) measures real work.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt.cli.demo_model import DATA, ONNX_MODEL, preprocess
from edgeopt.search import Cache, SearchConfig, search


def _data(root: Path) -> tuple[str, str]:
    data = np.load(DATA)
    (root / "calib").mkdir(parents=True, exist_ok=True)
    train = preprocess(data["x_train"])
    for i in range(0, 256, 128):
        np.savez(root / "calib" / f"batch_{i:04d}.npz", image=train[i:i + 128])
    np.savez(root / "val.npz", image=preprocess(data["x_val"]), label=data["y_val"])
    return str(root / "calib"), str(root / "val.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--objective", action="append", choices=("size", "latency", "macs"))
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="above 1: candidates run as local Ray tasks")
    parser.add_argument("--out", type=Path, default=Path("out/search_bench"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        calib, val = _data(Path(scratch))
        for objective in args.objective or ["size"]:
            cache = Cache(Path(scratch) / f"cache-{objective}")  # cold for each objective
            config = SearchConfig(target="ort-cpu", max_drop=args.max_drop, objective=objective,  # type: ignore[arg-type]
                                  trials=args.trials, seed=args.seed, labels="label", workers=args.workers)
            start = time.perf_counter()
            result = search(ONNX_MODEL, args.out / objective, calibration=calib, data=val, config=config,
                            cache=cache)
            seconds = time.perf_counter() - start
            best, base = result.best, result.baseline

            def row(r: object) -> dict[str, object] | None:
                return None if r is None else {k: getattr(r, k) for k in (
                    "number", "stages", "metric", "drop", "size_bytes", "latency_ms", "macs")}

            ratio = None
            if best is not None and base is not None and base.feasible:
                ratio = round(base.objective(objective) / best.objective(objective), 3)
            print(json.dumps({"objective": objective, "workers": args.workers, "trials": len(result.trials),
                              "failed": sum(r.state == "failed" for r in result.trials),
                              "feasible": sum(r.feasible for r in result.trials), "seconds": round(seconds, 1),
                              "computed": result.computed, "cache_hits": result.cache_hits,
                              "winner": row(best), "int8_seed": row(base), "seed_over_winner": ratio,
                              "front": [row(r) for r in result.front]}, default=str))


if __name__ == "__main__":
    main()
