"""The models of ``drop_layers_bench.py``: the pretrained MiniLM and two models trained here on digits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pretrained
import torch
from torch import nn

from edgeopt.cli.demo_model import load_data
from edgeopt.core.runtime import Feeds
from edgeopt.exporting.torch_export import export

CACHE = Path(__file__).resolve().parent / "results" / "pretrained-cache"
Run = Callable[[Feeds], list[np.ndarray]]


@dataclass
class Case:
    name: str
    model: ir.Model
    calibration: list[Feeds]
    output: str | None
    latency_feeds: Feeds
    fidelity: Callable[[Run], dict[str, Any]]


def minilm() -> Case:
    path, _ = pretrained.minilm_onnx(CACHE)
    tokenize = pretrained.minilm_tokenizer(64)
    texts = pretrained.sentences(192)
    calibration = [tokenize(texts[i:i + 16]) for i in range(0, 64, 16)]
    held_out = [tokenize(texts[i:i + 32]) for i in range(64, 192, 32)]
    model = ir.load(path)
    ir.external_data.load_to_model(model)
    index = [v.name for v in model.graph.outputs].index("sentence_embedding")
    reference: list[np.ndarray] = []

    def fidelity(run: Run) -> dict[str, Any]:
        got = [run(feeds)[index] for feeds in held_out]
        if not reference:
            reference.extend(got)
        cosines = np.concatenate([_cosine(r, g) for r, g in zip(reference, got, strict=True)])
        return {"fidelity": round(float(cosines.mean()), 5), "min_cosine": round(float(cosines.min()), 5)}

    return Case("minilm", model, calibration, "sentence_embedding", tokenize(texts[:8]), fidelity)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class DigitsTransformer(nn.Module):
    """Each row of the 8x8 digit is a token: embed, 6 post-LN encoder layers, mean-pool, classify."""

    def __init__(self, layers: int = 6, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.zeros(1, 8, width))
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(image.reshape(-1, 8, 8)) + self.position
        return self.head(self.encoder(tokens).mean(dim=1))


class _Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                               nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 1),
                               nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.f(x))


class DigitsResNet(nn.Module):
    """Conv stem, 6 identity residual blocks (depthwise 3x3 + pointwise 1x1), pool, linear."""

    def __init__(self, blocks: int = 6, channels: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(channels) for _ in range(blocks)])
        self.head = nn.Linear(channels, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(image)).mean(dim=(2, 3)))


def _train(module: nn.Module, epochs: int, lr: float) -> nn.Module:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a shared machine: more threads only contend
    data = load_data()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(module(x[batch]), y[batch]).backward()
            optimizer.step()
        schedule.step()
    return module.eval()


def _digits_case(name: str, module: nn.Module) -> Case:
    data = load_data()
    model = export(module, (torch.from_numpy(data.x_val[:2]),), input_names=["image"],
                   dynamic_axes={"image": {0: "batch"}}).model
    calibration = [{"image": data.x_train[i:i + 64]} for i in range(0, 256, 64)]
    reference: list[np.ndarray] = []

    def fidelity(run: Run) -> dict[str, Any]:
        logits = run({"image": data.x_val})[0]
        if not reference:
            reference.append(logits.argmax(1))
        return {"accuracy": round(float((logits.argmax(1) == data.y_val).mean()), 4),
                "fidelity": round(float((logits.argmax(1) == reference[0]).mean()), 4)}

    return Case(name, model, calibration, None, {"image": data.x_val[:64]}, fidelity)


def digits_transformer() -> Case:
    torch.manual_seed(0)
    return _digits_case("digits-transformer", _train(DigitsTransformer(), epochs=12, lr=3e-3))


def digits_resnet() -> Case:
    torch.manual_seed(0)
    return _digits_case("digits-resnet", _train(DigitsResNet(), epochs=8, lr=3e-3))


CASES: dict[str, Callable[[], Case]] = {
    "minilm": minilm,
    "digits-transformer": digits_transformer,
    "digits-resnet": digits_resnet,
}
