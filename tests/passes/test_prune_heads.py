"""Attention-head pruning: Q/K/V output features in blocks of head_dim, the head Reshape/Transpose
chain and the O projection's input rows go together (BERT-style self-attention, as torch exports it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.channels.groups import build_groups
from edgeopt.core.runtime import run_model
from edgeopt.passes import PruneChannelsPass
from edgeopt.passes.infer_shapes import InferShapesPass
from edgeopt.testing.prune_models import HEAD_DIM, HEADS, WIDTH, attention


def _feeds(seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((3, 5, WIDTH)).astype(np.float32)}


def test_heads_form_one_group_with_qkv_biases_and_o_rows() -> None:
    model = attention()
    InferShapesPass()(model)
    groups = build_groups(model)
    heads = [g for g in groups.groups if g.head_dim is not None]
    assert len(heads) == 1 and heads[0].prunable
    group = heads[0]
    assert group.size == HEADS and group.head_dim == HEAD_DIM and group.width == HEAD_DIM
    members = {(str(m.value.name), m.axis, m.block, m.role) for m in group.members}
    assert members == {("wq", 1, 4, "out"), ("wk", 1, 4, "out"), ("wv", 1, 4, "out"), ("wo", 0, 4, "in"),
                       ("bq", 0, 4, "param"), ("bk", 0, 4, "param"), ("bv", 0, 4, "param")}
    assert len(group.sources) == 3 and len(group.sinks) == 1


def test_pruning_zero_heads_leaves_outputs_unchanged(checker: Callable[[ir.Model], None]) -> None:
    model = attention(zero=(1, 3))
    feeds = _feeds()
    expected = run_model(model, feeds)["y"]
    pass_ = PruneChannelsPass(ratio=0.5, criterion="l2")
    pass_(model)
    checker(model)
    assert pass_.plan is not None
    [row] = [g for g in pass_.plan.groups if g.head_dim]
    assert (row.size, row.keep, row.removed, row.head_dim) == (4, 2, [1, 3], 4)
    weights = {str(v.name): v.const_value.shape for v in model.graph.initializers.values() if v.const_value}
    assert weights["wq"] == weights["wk"] == weights["wv"] == (16, 8) and weights["wo"] == (8, 16)
    assert weights["bq"] == (8,)
    got = run_model(model, feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert run_model(model, _feeds(2))["y"].shape == (3, 5, 16)


@pytest.mark.parametrize("kinds", ["heads", "channels"])
def test_kinds_selects_heads_or_channels(kinds: str) -> None:
    model = attention()
    pass_ = PruneChannelsPass(ratio=0.5, kinds=kinds, plan_only=True)  # type: ignore[arg-type]
    pass_(model)
    assert pass_.plan is not None
    [row] = [g for g in pass_.plan.groups if g.head_dim]
    assert (row.keep == 2) == (kinds == "heads")
    assert row.reason == (None if kinds == "heads" else "not selected (kinds=channels)")


@pytest.fixture(scope="module")
def exported_bert_attention(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT-style self-attention (separate Q/K/V Linear, view + transpose into heads, as in
    MiniLM) with heads 0 and 2 zeroed, exported by torch's dynamo exporter through edgeopt."""
    torch = pytest.importorskip("torch")
    from edgeopt.exporting.torch_export import export

    class SelfAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.o = (torch.nn.Linear(WIDTH, WIDTH) for _ in range(4))

        def split(self, t: torch.Tensor) -> torch.Tensor:
            return t.view(t.shape[0], t.shape[1], HEADS, HEAD_DIM).transpose(1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
            p = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM**0.5, dim=-1)
            c = (p @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], WIDTH)
            return torch.nn.functional.layer_norm(x + self.o(c), (WIDTH,))

    torch.manual_seed(0)
    module = SelfAttention().eval()
    with torch.no_grad():
        for head in (0, 2):
            cols = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
            for linear in (module.q, module.k, module.v):
                linear.weight[cols] = 0
                linear.bias[cols] = 0
            module.o.weight[:, cols] = 0
    path = tmp_path_factory.mktemp("heads") / "attention.onnx"
    export(module, (torch.randn(2, 5, WIDTH),), path, input_names=["x"], output_names=["y"],
           dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq"}})
    return path


def test_dynamo_export_prunes_zero_heads_exactly(exported_bert_attention: Path,
                                                 checker: Callable[[ir.Model], None]) -> None:
    from edgeopt.core.model_io import load_model

    model = load_model(exported_bert_attention)
    feeds = _feeds()
    expected = run_model(model, feeds)["y"]
    pass_ = PruneChannelsPass(ratio=0.5, kinds="heads")
    pass_(model)
    checker(model)
    assert pass_.plan is not None
    [row] = [g for g in pass_.plan.groups if g.head_dim]
    assert (row.size, row.keep, row.removed, len(row.sources)) == (4, 2, [0, 2], 3)
    got = run_model(model, feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    longer = {"x": np.random.default_rng(3).standard_normal((1, 9, WIDTH)).astype(np.float32)}
    assert run_model(model, longer)["y"].shape == (1, 9, WIDTH)  # dynamic batch and sequence still work


def test_packed_multihead_attention_keeps_its_heads_and_prunes_the_ffn(
        tmp_path: Path, checker: Callable[[ir.Model], None]) -> None:
    """nn.TransformerEncoderLayer's packed in_proj (heads folded into the batch axis) is not
    supported yet: its heads stay, with the reason, and the FFN neurons are still pruned."""
    torch = pytest.importorskip("torch")
    from edgeopt.core.model_io import load_model
    from edgeopt.exporting.torch_export import export

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(WIDTH, HEADS, 32, dropout=0.0, batch_first=True).eval()
    export(layer, (torch.randn(2, 5, WIDTH),), tmp_path / "layer.onnx", input_names=["x"], output_names=["y"],
           dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    model = load_model(tmp_path / "layer.onnx")
    pass_ = PruneChannelsPass(ratio=0.5)
    pass_(model)
    checker(model)
    assert pass_.plan is not None
    [packed] = [g for g in pass_.plan.groups if WIDTH * 3 in (g.size, g.size * (g.head_dim or 1))]  # Q, K, V
    assert packed.keep == packed.size and packed.reason is not None and "Gather" in packed.reason
    assert sorted((g.size, g.keep) for g in pass_.plan.groups if g.reason is None) == [(32, 16)]
    assert run_model(model, {"x": np.ones((3, 5, WIDTH), np.float32)})["y"].shape == (3, 5, WIDTH)
