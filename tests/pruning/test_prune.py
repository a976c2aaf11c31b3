"""``prune_file``, the pruning road as a library call: file in, pruned file and report out."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core import load_model, random_feeds, run_model
from edgeopt.pruning import PruneConfig, prune_file


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_structured_pruning_writes_a_smaller_model_that_runs(tmp_path: Path) -> None:
    before = _digest(ONNX_MODEL)
    result = prune_file(ONNX_MODEL, tmp_path / "pruned.onnx", PruneConfig(ratio=0.5, round_to=1))
    assert _digest(ONNX_MODEL) == before  # the input is never overwritten
    assert result.output is not None and result.output.resolve() == (tmp_path / "pruned.onnx").resolve()
    assert result.after is not None and result.plan is not None
    # the two Conv groups (16 and 32 channels) halved; the 10 logits reach the graph output and stay
    assert result.plan.channels == (58, 8 + 16 + 10)
    assert result.after.parameters < 0.8 * result.before.parameters
    assert result.after.macs < result.before.macs
    onnx.checker.check_model(onnx.load(str(result.output)), full_check=True)
    original, pruned = load_model(ONNX_MODEL), load_model(result.output)
    feeds = random_feeds(original)
    want, got = run_model(original, feeds), run_model(pruned, feeds)
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    assert all(np.isfinite(v).all() for v in got.values())


def test_plan_only_writes_nothing(tmp_path: Path) -> None:
    result = prune_file(ONNX_MODEL, None, PruneConfig(ratio=0.3), plan_only=True)
    assert result.output is None and result.after is None and result.plan is not None
    assert [(g.size, g.reason) for g in result.plan.groups] == [
        (16, None), (32, None), (10, "reaches graph output 'logits'")]
    assert [g.keep for g in result.plan.groups] == [16, 24, 10]  # 30 % rounded up to multiples of 8
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_unstructured_zeroes_the_requested_share_of_weights(tmp_path: Path, ratio: float) -> None:
    result = prune_file(ONNX_MODEL, tmp_path / "sparse.onnx", PruneConfig(ratio=ratio, unstructured=True))
    assert result.sparsity == pytest.approx(ratio, abs=0.02)
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(result.output)).graph.initializer]
    big = [w for w in weights if w.ndim >= 2]
    zeros = sum(int((w == 0).sum()) for w in big) / sum(w.size for w in big)
    assert zeros == pytest.approx(ratio, abs=0.05)
    assert result.zipped_after is not None and result.zipped_before is not None
    assert result.zipped_after < result.zipped_before


class _SamePaddingNet:
    """Convolutions padded TensorFlow-style from the input's shape, as timm's Conv2dSame exports."""

    @staticmethod
    def export(path: Path) -> None:
        import math

        import torch
        import torch.nn.functional as F

        class SameConv(torch.nn.Conv2d):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                ih, iw = x.size()[-2:]
                pad_h = max((math.ceil(ih / self.stride[0]) - 1) * self.stride[0] + 3 - ih, 0)
                pad_w = max((math.ceil(iw / self.stride[1]) - 1) * self.stride[1] + 3 - iw, 0)
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
                return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c1, self.c2 = SameConv(3, 16, 3, 2), SameConv(16, 16, 3, 1, groups=16)
                self.c3, self.fc = torch.nn.Conv2d(16, 32, 1), torch.nn.Linear(32, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
                return self.fc(x.mean((2, 3)))

        torch.manual_seed(0)
        torch.onnx.export(Net().eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17)


def test_a_raw_export_with_computed_pads_prunes_after_the_cleanup(tmp_path: Path) -> None:
    raw = tmp_path / "raw.onnx"
    _SamePaddingNet.export(raw)
    config = PruneConfig(ratio=0.5, round_to=1)

    cleaned = prune_file(raw, tmp_path / "cleaned.onnx", config)
    as_is = prune_file(raw, tmp_path / "as_is.onnx", PruneConfig(ratio=0.5, round_to=1, cleanup=False))

    assert cleaned.plan is not None and as_is.plan is not None and cleaned.after is not None
    # the 16-channel group behind the computed Pads prunes only once they are folded
    assert cleaned.plan.channels[1] < as_is.plan.channels[1]
    assert cleaned.after.parameters < 0.6 * cleaned.before.parameters
    feeds = random_feeds(load_model(raw))
    assert run_model(load_model(cleaned.output), feeds).keys() == run_model(load_model(raw), feeds).keys()
    assert any("accuracy not checked" in note for note in cleaned.notes)


def test_with_calibration_data_it_repairs_and_reports_fidelity(tmp_path: Path) -> None:
    from edgeopt.cli.demo_model import DATA, preprocess

    calib = tmp_path / "calib"
    calib.mkdir()
    train = preprocess(np.load(DATA)["x_train"][:256])
    np.savez(calib / "batch.npz", image=train)

    result = prune_file(ONNX_MODEL, tmp_path / "pruned.onnx", PruneConfig(ratio=0.5, round_to=1),
                        calibration=str(calib))
    blind = prune_file(ONNX_MODEL, tmp_path / "blind.onnx", PruneConfig(ratio=0.5, round_to=1, repair=False,
                                                                         criterion="l1"), calibration=str(calib))

    assert result.notes == [] and result.fidelity is not None and blind.fidelity is not None
    assert result.fidelity.samples == 256
    assert result.fidelity.top1_agreement is not None and blind.fidelity.top1_agreement is not None
    # the defaults (reconstruction criterion, repair) beat plain L1 on the same data
    assert result.fidelity.top1_agreement > blind.fidelity.top1_agreement + 0.05
    assert result.fidelity.top1_agreement > 0.9
