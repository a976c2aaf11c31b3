"""``edgeopt search`` toward issue 14's goals: the winner against the best single pass, resume, Ray workers.

    # the winner vs the best single-pass trial meeting the same budget, both from the same run
    python bench/search_bench.py --model efficientnet --max-drop 0.03 --trials 40
    python bench/search_bench.py --model minilm --max-drop 0.01 --metric cosine --trials 40
    python bench/search_bench.py --model digits --max-drop 0.01 --trials 40
    # kill the CLI (SIGKILL) once 10 trials finished, --resume it, compare with an uninterrupted run
    python bench/search_bench.py --model digits --kill-at 10 --trials 24
    # share-weights at 16/64 clusters with and without data-aware codebooks (the search's calibration data)
    python bench/search_bench.py --model minilm --metric cosine --share-weights-check
    # p50 latency of searched artifacts against the static int8 seed, run in turns under the same load
    python bench/search_bench.py --model minilm --calib-n 1000 --latency-check --artifact OUT/best/ort-cpu/model.onnx
    # the same fixed trial list with --workers 1 and --workers 2, side by side
    python bench/search_bench.py --model digits --workers-check --trials 16

Data: digits: 256 training images (calibration), the 360 held-out digits with labels
(accuracy). EfficientNet-Lite0 (pretrained, bench/pretrained.py): deterministic crops
of scikit-learn's two photos (top-1 agreement with fp32). MiniLM-L6: deterministic
sentences, seq 32, only the ``sentence_embedding`` output (cosine with fp32). Each
run starts from a cold cache (a fresh folder) and prints one JSON line, also
written to ``bench/results/search_<model>[_<check>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.cli.demo_model import DATA, ONNX_MODEL, preprocess
from edgeopt.search import Cache, SearchConfig, search
from edgeopt.search.records import TrialRecord

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = RESULTS / "pretrained-cache"


def _digits(root: Path, calib_n: int, val_n: int) -> tuple[Path, str, str, str | None]:
    data = np.load(DATA)
    (root / "calib").mkdir(parents=True, exist_ok=True)
    train = preprocess(data["x_train"])[:calib_n]
    for i in range(0, len(train), 128):
        np.savez(root / "calib" / f"batch_{i:04d}.npz", image=train[i:i + 128])
    np.savez(root / "val.npz", image=preprocess(data["x_val"])[:val_n], label=data["y_val"][:val_n])
    return Path(ONNX_MODEL), str(root / "calib"), str(root / "val.npz"), "label"


def _efficientnet(root: Path, calib_n: int, val_n: int) -> tuple[Path, str, str, str | None]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pretrained

    model, _ = pretrained.pretrained_cnn_onnx(CACHE)
    images = pretrained.sample_images(calib_n + val_n, seed=0)
    (root / "calib").mkdir(parents=True, exist_ok=True)
    for i in range(0, calib_n, 16):
        np.savez(root / "calib" / f"batch_{i:04d}.npz", **pretrained.efficientnet_lite0_feeds(images[i:min(i + 16,
                                                                                                          calib_n)]))
    np.savez(root / "val.npz", **pretrained.efficientnet_lite0_feeds(images[calib_n:]))
    return model, str(root / "calib"), str(root / "val.npz"), None


def _minilm(root: Path, calib_n: int, val_n: int) -> tuple[Path, str, str, str | None]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import onnx_ir as ir
    import pretrained

    full, tokenize = pretrained.minilm_onnx(CACHE, seq_len=32)
    model = ir.load(full)
    kept = [v for v in model.graph.outputs if v.name == "sentence_embedding"]
    model.graph.outputs.clear()
    model.graph.outputs.extend(kept)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    path = root / "minilm-sentence.onnx"
    ir.save(model, path)
    texts = pretrained.sentences(calib_n + val_n)
    (root / "calib").mkdir(parents=True, exist_ok=True)
    for i in range(0, calib_n, 16):
        np.savez(root / "calib" / f"batch_{i:04d}.npz", **tokenize(texts[i:min(i + 16, calib_n)]))
    np.savez(root / "val.npz", **tokenize(texts[calib_n:]))
    return path, str(root / "calib"), str(root / "val.npz"), None


MODELS = {"digits": (_digits, 256, 360), "efficientnet": (_efficientnet, 64, 100), "minilm": (_minilm, 64, 96)}


def _row(r: TrialRecord | None) -> dict[str, Any] | None:
    return None if r is None else {k: getattr(r, k) for k in (
        "number", "stages", "metric", "drop", "size_bytes", "latency_ms", "latency_trial_ms", "macs", "seconds")}


def single_pass(trials: list[TrialRecord], objective: str, original_bytes: int) -> TrialRecord | None:
    """The best feasible trial that ran exactly one pass and made the file smaller (weight-only int8 of a CNN
    without MatMul changes nothing: it is the original, not a compression that met the budget)."""
    alone = [r for r in trials if r.feasible and r.stages != "original" and " -> " not in r.stages
             and (r.size_bytes or original_bytes) < original_bytes]
    return min(alone, key=lambda r: (r.objective(objective), r.number), default=None)  # type: ignore[arg-type]


def _config(args: argparse.Namespace, labels: str | None, **changes: Any) -> SearchConfig:
    values: dict[str, Any] = {"target": "ort-cpu", "max_drop": args.max_drop, "objective": args.objective,
                              "trials": args.trials, "seed": args.seed, "labels": labels, "workers": args.workers,
                              "patience": args.patience, "time_limit": args.time_limit, "metric": args.metric,
                              "stages": tuple(args.stages.split(",")) if args.stages else ()}
    values.update(changes)
    return SearchConfig(**values)


def compare(args: argparse.Namespace, scratch: Path, data: tuple[Path, str, str, str | None]) -> dict[str, Any]:
    model, calib, val, labels = data
    start = time.perf_counter()
    result = search(model, args.out, calibration=calib, data=val, config=_config(args, labels, resume=args.resume),
                    cache=Cache(scratch / "cache"))
    seconds = time.perf_counter() - start
    objective = result.objective
    original = model.stat().st_size
    best, alone, base = result.best, single_pass(result.trials, objective, original), result.baseline
    seconds_each = sorted(r.seconds for r in result.trials if not r.cached)
    ratio = None if best is None or alone is None else round(alone.objective(objective) / best.objective(objective), 3)
    return {"model": args.model, "objective": objective, "max_drop": args.max_drop, "trials": len(result.trials),
            "stopped": result.stopped, "failed": sum(r.state == "failed" for r in result.trials),
            "feasible": sum(r.feasible for r in result.trials), "seconds": round(seconds, 1),
            "computed": result.computed, "cache_hits": result.cache_hits, "winner": _row(best),
            "best_single_pass": _row(alone), "single_pass_over_winner": ratio, "int8_seed": _row(base),
            "single_pass_trials": sum(r.stages != "original" and " -> " not in r.stages for r in result.trials),
            "original_size_bytes": original, "cut": sum(r.cut is not None for r in result.trials),
            "median_trial_seconds": seconds_each[len(seconds_each) // 2] if seconds_each else None,
            "front": [_row(r) for r in result.front], "report": str(args.out / "report.html")}


def _cli(args: argparse.Namespace, data: tuple[Path, str, str, str | None], out: Path, *extra: str) -> list[str]:
    model, calib, val, labels = data
    argv = [sys.executable, "-m", "edgeopt", "search", str(model), "--calib", calib, "--data", val, "-t", "ort-cpu",
            "--max-drop", str(args.max_drop), "--objective", args.objective, "--trials", str(args.trials),
            "--seed", str(args.seed), "--patience", "0", "--metric", args.metric, "-o", str(out), "--json", *extra]
    return argv + (["--labels", labels] if labels else []) + (["--stages", args.stages] if args.stages else [])


def _complete(journal: Path) -> int:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not journal.is_file():
        return 0
    try:
        study = optuna.load_study(study_name="edgeopt-search", storage=JournalStorage(JournalFileBackend(str(journal))))
    except Exception:  # noqa: BLE001 - not written yet
        return 0
    return sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


def kill_and_resume(args: argparse.Namespace, scratch: Path, data: tuple[Path, str, str, str | None]) -> dict[str, Any]:
    """The CLI killed (SIGKILL) once ``--kill-at`` trials finished, resumed, against an uninterrupted run."""
    env = {**os.environ, "EDGEOPT_CACHE_DIR": str(scratch / "cache-killed")}
    out = args.out / "killed"
    proc = subprocess.Popen(_cli(args, data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and _complete(out / "study.journal") < args.kill_at:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = _complete(out / "study.journal")
    resumed = json.loads(subprocess.run(_cli(args, data, out, "--resume"), env=env, capture_output=True, text=True,
                                        check=True).stdout)
    env["EDGEOPT_CACHE_DIR"] = str(scratch / "cache-whole")
    whole = json.loads(subprocess.run(_cli(args, data, args.out / "whole"), env=env, capture_output=True, text=True,
                                      check=True).stdout)
    table = json.loads((out / "trials.json").read_text())["trials"]
    reference = json.loads((args.out / "whole" / "trials.json").read_text())["trials"]
    return {"model": args.model, "killed_after": finished, "trials": len(table),
            "resumed_computed": resumed["computed"], "resumed_cache_hits": resumed["cache_hits"],
            "whole_computed": whole["computed"],
            "same_params": [t["params"] for t in table] == [t["params"] for t in reference],
            "same_winner": (resumed["best"] or {}).get("params") == (whole["best"] or {}).get("params"),
            "winner": resumed["best"] and {k: resumed["best"][k] for k in ("number", "stages", "size_bytes", "drop")}}


def workers_check(args: argparse.Namespace, scratch: Path, data: tuple[Path, str, str, str | None]) -> dict[str, Any]:
    """The same trials with one and two workers, cold caches, side by side (patience off)."""
    model, calib, val, labels = data
    times, results = {}, {}
    for workers in (1, 2):
        start = time.perf_counter()
        results[workers] = search(model, args.out / f"workers{workers}", calibration=calib, data=val,
                                  config=_config(args, labels, workers=workers, patience=0),
                                  cache=Cache(scratch / f"cache-w{workers}"))
        times[workers] = round(time.perf_counter() - start, 1)
    return {"model": args.model, "trials": args.trials, "seconds_1": times[1], "seconds_2": times[2],
            "ratio": round(times[2] / times[1], 3), "load_average": os.getloadavg(),
            "same_best": (results[1].best and results[1].best.params) == (results[2].best and results[2].best.params)}


def share_weights_check(args: argparse.Namespace, scratch: Path, data: tuple[Path, str, str, str | None]
                        ) -> dict[str, Any]:
    """The share-weights stage at 16 and 64 clusters, plain k-means against data-aware codebooks (the search's
    calibration data), scored as the search screens a model (ORT, the search's metric on the validation data)."""
    from edgeopt.search.screen import Screen
    from edgeopt.search.stages import cluster_weights_file

    model, calib, val, labels = data
    screen = Screen(model, data=val, labels=labels, metric=args.metric)
    rows = []
    for clusters in (16, 64):
        for data_aware in (False, True):
            out = scratch / f"c{clusters}_{data_aware}.onnx"
            start = time.perf_counter()
            cluster_weights_file(model, out, clusters=clusters, data_aware=data_aware, calibration=calib, samples=128)
            seconds = time.perf_counter() - start
            name, value, base = screen.score(out)
            rows.append({"clusters": clusters, "data_aware": data_aware, name: round(value, 5), "base": base,
                         "size_bytes": out.stat().st_size, "seconds": round(seconds, 1)})
    return {"model": args.model, "metric": screen.score(model)[0], "calibration_samples": 64, "rows": rows}


def latency_check(args: argparse.Namespace, scratch: Path, data: tuple[Path, str, str, str | None]
                  ) -> dict[str, Any]:
    """p50 latency of compiled artifacts side by side: the static and weight-only int8 seeds, built here, and each
    ``--artifact`` (a trial's ``best/ort-cpu/model.onnx``), run in turns on the validation data, so that all see
    the same load; a search measures its trials minutes apart, under whatever load there was then."""
    from edgeopt.deploy.compile import compile_model
    from edgeopt.deploy.timing import time_side_by_side
    from edgeopt.quantization.quantize import QuantizeConfig, quantize_file

    model, calib, val, _ = data
    seeds = {"int8 seed": QuantizeConfig(mode="static", per_channel=True, budget=0.0, samples=128, eval_samples=64),
             "weight-only int8 seed": QuantizeConfig(mode="weight-only", bits=8, embedding_bits=8, samples=128,
                                                     eval_samples=64)}
    folders = {}
    for name, config in seeds.items():
        folder = scratch / name.replace(" ", "_")
        static = config.mode == "static"
        quantize_file(model, folder.with_suffix(".onnx"), config, calibration=calib if static else None)
        compile_model(folder.with_suffix(".onnx"), folder, targets=["ort-cpu"], calibration=calib)
        folders[name] = folder
    folders.update({Path(a).parent.parent.name: Path(a).parent.parent for a in args.artifact})  # OUT/best
    p50 = {name: round(ms, 3) for name, ms in time_side_by_side(folders, data=val, reference=model,
                                                                  rounds=args.rounds + 1, limit=None).items()}
    ratios = {n: round(p50["int8 seed"] / v, 3) for n, v in p50.items()}
    return {"model": args.model, "p50_ms": p50, "int8_over": ratios, "rounds": args.rounds,
            "load_average": os.getloadavg(), "folders": {n: str(p) for n, p in folders.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="digits")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--objective", default="size")
    parser.add_argument("--metric", default="auto", choices=("auto", "accuracy", "agreement", "cosine"))
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--stages", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--workers", type=int, default=1, help="above 1: candidates run as local Ray tasks")
    parser.add_argument("--kill-at", type=int, default=0, help="check resume: SIGKILL after this many trials")
    parser.add_argument("--workers-check", action="store_true", help="time --workers 1 against 2")
    parser.add_argument("--share-weights-check", action="store_true",
                        help="share-weights at 16/64 clusters, with and without data-aware codebooks")
    parser.add_argument("--latency-check", action="store_true",
                        help="p50 latency of --artifact files against the static int8 seed, in turns")
    parser.add_argument("--artifact", action="append", default=[], help="with --latency-check (repeatable)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="with --latency-check: timed passes over the data (one untimed warm-up pass first)")
    parser.add_argument("--resume", action="store_true", help="continue the search in --out (more trials)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--calib-n", type=int, default=0,
                        help="calibration samples to write (default: the model's; the distill stage trains on all)")
    parser.add_argument("--label", default="", help="results file search_<model>_<label>.json")
    args = parser.parse_args()
    check = ("resume" if args.kill_at else "workers" if args.workers_check
             else "share" if args.share_weights_check else "latency" if args.latency_check else "")
    name = f"search_{args.model}" + (f"_{check}" if check else "") + (f"_{args.label}" if args.label else "")
    args.out = args.out or Path(tempfile.mkdtemp(prefix=f"{name}-"))
    build, calib_n, val_n = MODELS[args.model]
    with tempfile.TemporaryDirectory() as scratch:
        data = build(Path(scratch), args.calib_n or calib_n, val_n)
        run = (kill_and_resume if args.kill_at else workers_check if args.workers_check
               else share_weights_check if args.share_weights_check else latency_check if args.latency_check
               else compare)
        row = {**run(args, Path(scratch), data), "command": " ".join(sys.argv), "cpus": os.cpu_count(),
               "note": "a 2-core machine; latency_ms of the fastest feasible trials, the fastest single pass and the "
                       "int8 seed were timed again side by side at the end of the search (latency_trial_ms: the "
                       "trial's own p50, measured when it ran)"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=1, default=str) + "\n")
    print(json.dumps(row, default=str))


if __name__ == "__main__":
    main()
