"""The demo's model and data: a small CNN trained on scikit-learn's digits.

The package ships the trained weights (``assets/digits_cnn.pt``), the same model
exported to ONNX (``assets/digits_cnn.onnx``) and the data split
(``assets/digits.npz``), so the demo needs no download and no scikit-learn.
Regenerate all three with ``python -m edgeopt.cli.demo_model`` (needs scikit-learn);
training is seeded and the split is fixed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

ASSETS = Path(str(resources.files("edgeopt") / "assets"))
WEIGHTS = ASSETS / "digits_cnn.pt"
ONNX_MODEL = ASSETS / "digits_cnn.onnx"
DATA = ASSETS / "digits.npz"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
SEED = 0


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU x2, max-pool, dropout, linear: 8x8 grey digits to 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 4 * 4, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


@dataclass(frozen=True)
class DigitsData:
    """Images as float32 ``(N, 1, 8, 8)`` in [0, 1], labels as int64 ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Raw digits pixels (0..16, any leading shape of 64 values) -> model input."""
    return (np.asarray(pixels, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)


def load_data(path: Path = DATA) -> DigitsData:
    """The shipped split (80 % train, 20 % held-out validation, fixed by seed)."""
    with np.load(path) as raw:
        return DigitsData(
            preprocess(raw["x_train"]), raw["y_train"].astype(np.int64),
            preprocess(raw["x_val"]), raw["y_val"].astype(np.int64),
        )


def load_model(path: Path = WEIGHTS) -> DigitsCNN:
    """The trained model, in eval mode."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def train(data: DigitsData, *, epochs: int = 40, seed: int = SEED) -> DigitsCNN:
    """Train :class:`DigitsCNN` with Adam, deterministic for a given seed."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


def write_assets(out: Path = ASSETS) -> dict[str, float]:
    """Split scikit-learn's digits, train, and write weights, ONNX model and data."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from edgeopt.exporting.torch_export import export

    digits = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        digits.data.astype(np.uint8), digits.target.astype(np.uint8),
        test_size=0.2, random_state=SEED, stratify=digits.target,
    )
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / DATA.name, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    data = load_data(out / DATA.name)
    model = train(data)
    torch.save(model.state_dict(), out / WEIGHTS.name)
    export(model, (torch.from_numpy(data.x_val[:1]),), out / ONNX_MODEL.name,
           input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
           dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    with torch.no_grad():
        val = accuracy(model(torch.from_numpy(data.x_val)).numpy(), data.y_val)
    return {"val_accuracy": val, "train_size": len(y_train), "val_size": len(y_val)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="asset folder")
    print(write_assets(parser.parse_args().out))  # a maintainer's script, not the library


if __name__ == "__main__":
    main()
