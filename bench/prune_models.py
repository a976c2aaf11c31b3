"""The CNN of the pruning benchmark: a MobileNetV2-style residual network trained here on digits.

Inverted-residual blocks (1x1 expand, 3x3 depthwise, 1x1 project, identity shortcut) over
three stages, trained (seeded, a few minutes on 2 busy cores) on scikit-learn's digits upsampled to
16x16 so accuracy can be measured. The PyTorch module is kept (state dict) so Torch-Pruning can
prune the very same network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

SIZE = 16
EPOCHS = 6
SEED = 0


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int = 2) -> None:
        super().__init__()
        hidden = channels * expand
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class ResidualDWNet(nn.Module):
    """Stem 32 @16x16 and a block; 64 @8x8 and a block; 128 @4x4 and a block; pool; linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
            InvertedResidual(32),
            _down(32, 64), InvertedResidual(64),
            _down(64, 128), InvertedResidual(128),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(image)), 1))


def upsample(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        t = nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=(SIZE, SIZE),
                                      mode="bilinear", align_corners=False)
    return t.numpy().astype(np.float32)


def trained(cache: Path, log: Any = print) -> tuple[ResidualDWNet, dict[str, Any]]:
    """The trained network (cached state dict) and its training info."""
    from edgeopt.cli.demo_model import load_data

    weights, info_path = cache / f"resdw-digits{SIZE}-e{EPOCHS}.pt", cache / f"resdw-digits{SIZE}-e{EPOCHS}.json"
    torch.manual_seed(SEED)
    model = ResidualDWNet()
    if weights.is_file() and info_path.is_file():
        model.load_state_dict(torch.load(weights))
        return model.eval(), json.loads(info_path.read_text())
    data = load_data()
    x, y = torch.from_numpy(upsample(data.x_train)), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=4e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=EPOCHS * ((len(x) + 63) // 64))
    gen = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(64):
            shift = torch.randint(-2, 3, (2,), generator=gen)
            xb = torch.roll(x[idx], shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), y[idx]).backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(upsample(data.x_val))).argmax(1).numpy() == data.y_val).mean())
    info = {"train_seconds": round(time.perf_counter() - started, 1), "epochs": EPOCHS, "val_accuracy_torch": acc,
            "params": int(sum(p.numel() for p in model.parameters()))}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    info_path.write_text(json.dumps(info))
    log(f"trained the residual depthwise CNN in {info['train_seconds']}s: val accuracy {acc:.4f}")
    return model, info


def export_onnx(model: nn.Module, path: Path) -> Path:
    """Export (dynamo, dynamic batch) and run the cleanup preset (folds BatchNorm)."""
    from edgeopt.core.model_io import load_model, save_model
    from edgeopt.exporting.torch_export import export
    from edgeopt.passes import cleanup

    export(model.eval(), (torch.zeros(1, 1, SIZE, SIZE),), path, input_names=["image"], output_names=["logits"],
           dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    onnx_model = load_model(path)
    cleanup()(onnx_model)
    return save_model(onnx_model, path, overwrite_input=True)
