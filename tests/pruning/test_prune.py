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
