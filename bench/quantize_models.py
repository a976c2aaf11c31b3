"""The quantization benchmark's models and data (see ``bench/quantize_bench.py``).

Four models, each with deterministic calibration batches (written once as ``.npz``
files so that every tool and every subprocess reads exactly the same data, one
batch at a time) and held-out data for fidelity:

- ``minilm``: all-MiniLM-L6-v2 sentence encoder (pretrained, from a wheel; see
  ``bench/pretrained.py``). Calibration: sentences 0..999 padded to 64 tokens in
  batches of 10 (ONNX Runtime's histogram calibrators need equal shapes across
  batches); held-out: sentences 1000..1199 at their natural length, batch 1.
- ``efficientnet``: EfficientNet-Lite0, ImageNet pretrained (from a wheel).
  Calibration: crops of scikit-learn's two photos (seeds 0..), batches of 10;
  held-out: crops from another seed. No labels: fidelity only.
- ``dwcnn``: a depthwise-separable CNN (MobileNet-style blocks, ReLU6) trained
  here in well under a minute on scikit-learn's digits upsampled to 32x32.
- ``digits``: the demo's small CNN (``edgeopt/assets``), same split.

Everything is cached under the cache folder; delete it to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pretrained  # noqa: E402  (bench/pretrained.py)

Feeds = dict[str, np.ndarray]
MODELS = ("minilm", "efficientnet", "dwcnn", "digits")
CALIB_POOL = 1000
"""Calibration samples written per model (the memory study goes up to this many)."""


# --------------------------------------------------------------------------------------------------
# Calibration data on disk: one .npz per batch, read back one at a time
# --------------------------------------------------------------------------------------------------

class FileFeeds:
    """Re-iterable feeds from ``.npz`` batch files (one loaded at a time), also an ORT
    ``CalibrationDataReader`` (``get_next``/``rewind``), so both tools read the same bytes."""

    def __init__(self, files: list[Path]) -> None:
        self.files = [Path(f) for f in files]
        self._it: Iterator[Feeds] | None = None

    def __iter__(self) -> Iterator[Feeds]:
        for f in self.files:
            with np.load(f) as z:
                yield {k: np.array(z[k]) for k in z.files}

    def __len__(self) -> int:
        return len(self.files)

    def get_next(self) -> Feeds | None:
        if self._it is None:
            self._it = iter(self)
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def _write_batches(folder: Path, batches: Iterator[Feeds], key: str) -> list[tuple[Path, int]]:
    """Write (once) the batch files; return [(file, rows)] in order."""
    marker = folder / "index.json"
    if marker.is_file():
        index = json.loads(marker.read_text())
        if index.get("key") == key and all((folder / f).is_file() for f, _ in index["files"]):
            return [(folder / f, rows) for f, rows in index["files"]]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, feeds in enumerate(batches):
        name = f"batch-{i:05d}.npz"
        np.savez(folder / name, **feeds)  # type: ignore[arg-type]
        files.append((name, int(next(iter(feeds.values())).shape[0])))
    marker.write_text(json.dumps({"key": key, "files": files}))
    return [(folder / f, rows) for f, rows in files]


# --------------------------------------------------------------------------------------------------
# The depthwise-separable CNN trained here
# --------------------------------------------------------------------------------------------------

DW_SIZE = 32
DW_EPOCHS = 12
DW_SEED = 0


def _dwcnn_module() -> Any:
    import torch
    from torch import nn

    def dwsep(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6(),
        )

    class DWSepCNN(nn.Module):
        """MobileNet-v1-style: stem conv, 4 depthwise-separable blocks, global pool, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                dwsep(16, 32, 2), dwsep(32, 64, 2), dwsep(64, 64, 1), dwsep(64, 128, 2),
            )
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(image))

    return DWSepCNN()


def upsample_digits(x: np.ndarray, size: int = DW_SIZE) -> np.ndarray:
    """Digits images (N,1,8,8) in [0,1] -> (N,1,size,size) bilinear, float32."""
    import torch

    with torch.no_grad():
        t = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=(size, size),
                                            mode="bilinear", align_corners=False)
    return t.numpy().astype(np.float32)


def dwcnn_onnx(cache: Path, log: Any = print) -> tuple[Path, dict[str, Any]]:
    """Train (seeded, < 1 min on 2 cores) and export the depthwise-separable CNN; cached."""
    src = Path(__file__).read_bytes()
    key = hashlib.sha256(src[src.index(b"DW_SIZE = "):src.index(b"def dwcnn_onnx")]).hexdigest()[:12]
    path = cache / f"dwcnn-digits{DW_SIZE}-{key}.onnx"
    info_path = path.with_suffix(".json")
    if path.is_file() and info_path.is_file():
        return path, json.loads(info_path.read_text())
    import torch
    from torch import nn

    from edgeopt.cli.demo_model import load_data
    from edgeopt.exporting.torch_export import export

    data = load_data()
    x_train, x_val = upsample_digits(data.x_train), upsample_digits(data.x_val)
    torch.manual_seed(DW_SEED)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = _dwcnn_module()
    opt = torch.optim.Adam(model.parameters(), lr=4e-3, weight_decay=1e-5)
    x, y = torch.from_numpy(x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(DW_SEED)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=DW_EPOCHS * ((len(x) + 63) // 64))
    started = time.perf_counter()
    for _ in range(DW_EPOCHS):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            xb = x[idx]
            shift = torch.randint(-2, 3, (2,), generator=gen)  # a little translation augmentation
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        val_acc = float((model(torch.from_numpy(x_val)).argmax(1).numpy() == data.y_val).mean())
    cache.mkdir(parents=True, exist_ok=True)
    export(model, (torch.from_numpy(x_val[:1]),), path, input_names=["image"], output_names=["logits"],
           dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    info = {"train_seconds": round(train_s, 1), "epochs": DW_EPOCHS, "val_accuracy_torch": val_acc,
            "params": int(sum(p.numel() for p in model.parameters()))}
    info_path.write_text(json.dumps(info))
    log(f"trained the depthwise-separable CNN in {train_s:.1f}s: val accuracy {val_acc:.4f}")
    return path, info


# --------------------------------------------------------------------------------------------------
# Model cases
# --------------------------------------------------------------------------------------------------

@dataclass
class ModelCase:
    name: str
    title: str
    path: Path
    kind: Literal["classifier", "embedding"]
    output: str
    """The output fidelity is measured on."""
    calib: list[tuple[Path, int]]
    """Calibration batch files and their row counts, in order (CALIB_POOL samples)."""
    eval_feeds: list[Feeds]
    labels: np.ndarray | None
    latency_feed: Feeds
    transformer: bool = False
    max_drop: float = 0.01
    calib_padded: list[tuple[Path, int]] | None = None
    """For transformers: the same samples padded to one length (ORT's histogram calibrators need it)."""
    info: dict[str, Any] = field(default_factory=dict)

    def calib_files(self, samples: int, *, padded: bool = False) -> list[Path]:
        """The first batch files holding exactly ``samples`` rows."""
        files, rows = [], 0
        for f, n in (self.calib_padded if padded and self.calib_padded else self.calib):
            if rows >= samples:
                break
            files.append(f)
            rows += n
        if rows != samples:
            raise ValueError(f"{self.name}: {samples} samples is not a whole number of calibration batches")
        return files


def build_case(name: str, cache: Path, *, eval_samples: int | None = None, log: Any = print) -> ModelCase:
    cache = Path(cache)
    if name == "minilm":
        return _minilm(cache, eval_samples or 200)
    if name == "efficientnet":
        return _efficientnet(cache, eval_samples or 200)
    if name == "dwcnn":
        return _digits_like(cache, "dwcnn", eval_samples, log)
    if name == "digits":
        return _digits_like(cache, "digits", eval_samples, log)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def model_path(name: str, cache: Path) -> Path:
    """Just the fp32 file (for subprocesses)."""
    if name == "minilm":
        return pretrained.minilm_onnx(cache, seq_len=None)[0]
    if name == "efficientnet":
        return pretrained.pretrained_cnn_onnx(cache, "efficientnet-lite0")[0]
    if name == "dwcnn":
        return dwcnn_onnx(cache)[0]
    from edgeopt.cli.demo_model import ONNX_MODEL

    return ONNX_MODEL


def _minilm(cache: Path, n_eval: int) -> ModelCase:
    path, natural = pretrained.minilm_onnx(cache, seq_len=None)
    padded = pretrained.minilm_tokenizer(64)
    texts = pretrained.sentences(CALIB_POOL + n_eval)

    def calib() -> Iterator[Feeds]:  # one sentence per batch at its own length: no padding in the ranges
        for i in range(CALIB_POOL):
            yield natural(texts[i:i + 1])

    def calib_padded() -> Iterator[Feeds]:
        for i in range(0, CALIB_POOL, 10):
            yield padded(texts[i:i + 10])

    calib_files = _write_batches(cache / "calib" / "minilm-natural-b1", calib(), f"{path.name}-{CALIB_POOL}")
    padded_files = _write_batches(cache / "calib" / "minilm-seq64-b10", calib_padded(), f"{path.name}-{CALIB_POOL}")
    held = texts[CALIB_POOL:CALIB_POOL + n_eval]
    eval_feeds = [natural([t]) for t in held]
    lengths = [int(f["attention_mask"].sum()) for f in eval_feeds]
    median = sorted(range(len(held)), key=lambda i: lengths[i])[len(held) // 2]
    return ModelCase("minilm", "all-MiniLM-L6-v2 (pretrained transformer, 22.7 M params)", path, "embedding",
                     "sentence_embedding", calib_files, eval_feeds, None, eval_feeds[median], transformer=True,
                     max_drop=0.002, calib_padded=padded_files,
                     info={"calibration": "sentences 0-999, one per batch at natural length (main configs)",
                           "calibration_padded": "the same sentences padded to 64 tokens, batches of 10: for "
                                                 "ORT's histogram calibrators (equal shapes needed) and the "
                                                 "calibration study",
                           "held_out": f"sentences {CALIB_POOL}-{CALIB_POOL + n_eval - 1}, natural length, batch 1",
                           "latency_tokens": lengths[median]})


def _efficientnet(cache: Path, n_eval: int) -> ModelCase:
    path, desc = pretrained.pretrained_cnn_onnx(cache, "efficientnet-lite0")

    def calib() -> Iterator[Feeds]:
        for i in range(CALIB_POOL // 10):
            yield pretrained.efficientnet_lite0_feeds(pretrained.sample_images(10, seed=1000 + i))

    calib_files = _write_batches(cache / "calib" / "efficientnet-b10", calib(), f"{path.name}-{CALIB_POOL}")
    images = pretrained.sample_images(n_eval, seed=7)
    x = pretrained.efficientnet_lite0_feeds(images)["input"]
    eval_feeds = [{"input": x[i:i + 25]} for i in range(0, len(x), 25)]
    return ModelCase("efficientnet", "EfficientNet-Lite0 (pretrained ImageNet CNN, 4.65 M params)", path,
                     "classifier", "logits", calib_files, eval_feeds, None, {"input": x[:1]},
                     info={"description": desc, "calibration": "1000 crops (seeds 1000-1099), batches of 10",
                           "held_out": f"{n_eval} crops (seed 7), no labels"})


def _digits_like(cache: Path, name: str, n_eval: int | None, log: Any) -> ModelCase:
    from edgeopt.cli.demo_model import ONNX_MODEL, load_data

    data = load_data()
    if name == "dwcnn":
        path, info = dwcnn_onnx(cache, log)
        x_train, x_val = upsample_digits(data.x_train), upsample_digits(data.x_val)
        title = f"depthwise-separable CNN trained here (digits {DW_SIZE}x{DW_SIZE}, {info['params']} params)"
    else:
        path, info = ONNX_MODEL, {}
        x_train, x_val = data.x_train, data.x_val
        title = "digits CNN (edgeopt/assets, the demo's model)"
    y_val = data.y_val
    if n_eval is not None:
        x_val, y_val = x_val[:n_eval], y_val[:n_eval]

    def calib() -> Iterator[Feeds]:
        for i in range(0, CALIB_POOL, 50):
            yield {"image": x_train[i:i + 50]}

    calib_files = _write_batches(cache / "calib" / f"{name}-b50", calib(), f"{path.name}-{CALIB_POOL}")
    eval_feeds = [{"image": x_val[i:i + 120]} for i in range(0, len(x_val), 120)]
    return ModelCase(name, title, path, "classifier", "logits", calib_files, eval_feeds, y_val,
                     {"image": x_val[:1]},
                     info={**info, "calibration": "training images 0-999, batches of 50",
                           "held_out": f"{len(y_val)} validation images with labels"})
