"""drop-layers: a block that is the identity by construction ranks first and dropping it changes
nothing; weights go with the nodes; repair refits the next projection; options are checked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from edgeopt.blocks.residual import find_blocks
from edgeopt.blocks.scoring import compare, score_blocks
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.exporting.torch_export import export
from edgeopt.passes import DropLayersPass
from edgeopt.passes.drop_layers import DROPPED_KEY
from edgeopt.testing.residual_models import residual_cnn, residual_mlp


def _mlp(blocks: int = 4, identity: tuple[int, ...] = ()) -> ir.Model:
    return ir.serde.deserialize_model(residual_mlp(blocks, identity=identity))


def _data(name: str, shape: tuple[int, ...], batches: int = 4, seed: int = 0) -> list[Feeds]:
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(batches)]


def test_identity_block_ranks_first_and_dropping_it_changes_nothing(
    apply_pass: Callable[..., ir.passes.PassResult], op_counts: Callable
) -> None:
    model = _mlp(identity=(2,))
    data = _data("x", (8, 16))
    ranked = score_blocks(model, find_blocks(model), lambda: iter(data))
    assert ranked[0].name == "layer2" and ranked[0].impact == 0.0 and ranked[0].agreement == 1.0
    assert all(s.impact > 1e-3 for s in ranked[1:])
    before = op_counts(model)
    result = apply_pass(DropLayersPass(count=1, calibration=data), model, data, rtol=0, atol=0)
    assert result.modified
    assert before["MatMul"] - op_counts(model)["MatMul"] == 2 and op_counts(model)["Add"] == before["Add"] - 1
    assert "A2" not in model.graph.initializers and "B2" not in model.graph.initializers
    assert model.metadata_props[DROPPED_KEY] == "layer:count=1 -> layer2"
    assert not DropLayersPass(count=1, calibration=data)(model).modified  # idempotent


@pytest.fixture(scope="module")
def pre_ln_encoder() -> ir.Model:
    """A 3-layer pre-LN encoder whose middle layer adds zeros (out-projections zeroed)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
    encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
    for p in encoder.parameters():
        p.data.normal_(0, 0.2)
    middle = encoder.layers[1]
    for zeroed in (middle.self_attn.out_proj, middle.linear2):
        zeroed.weight.data.zero_()
        zeroed.bias.data.zero_()
    return export(encoder, torch.randn(2, 5, 16), dynamic_axes={"src": {0: "batch", 1: "seq"}}).model


def test_identity_transformer_layer(pre_ln_encoder: ir.Model, apply_pass: Callable[..., ir.passes.PassResult],
                                    op_counts: Callable) -> None:
    model = pre_ln_encoder.clone()
    data = _data("src", (2, 5, 16), batches=2)
    ranked = score_blocks(model, find_blocks(model), lambda: iter(data))
    assert ranked[0].name == "layer1" and ranked[0].impact < 1e-6
    assert ranked[1].impact > 1e-3
    softmax = op_counts(model)["Softmax"]
    apply_pass(DropLayersPass(count=1, calibration=data), model, data, rtol=1e-5, atol=1e-5)
    assert op_counts(model)["Softmax"] == softmax - 1
    assert len(find_blocks(model)) == 2


def _numpy_mlp(model: ir.Model, x: np.ndarray, keep: list[int]) -> np.ndarray:
    """The residual MLP computed in numpy with only blocks ``keep``."""
    w = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}  # type: ignore[union-attr]
    for i in keep:
        x = x + np.maximum(x @ w[f"A{i}"], 0) @ w[f"B{i}"]
    return x @ w["W"] + w["bias"]


@pytest.mark.parametrize("names", [("layer2",), ("layer0", "layer2"), ("layer0", "layer1", "layer2")])
def test_named_blocks_against_numpy(names: tuple[str, ...], checker: Callable[[ir.Model], None]) -> None:
    model = _mlp(3)
    reference = model.clone()
    x = _data("x", (4, 16))[0]
    assert DropLayersPass(blocks=names)(model).modified
    checker(model)
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["logits"]
    keep = [i for i in range(3) if f"layer{i}" not in names]
    expected = _numpy_mlp(reference, x["x"], keep)
    np.testing.assert_allclose(run_model(model, x)["logits"], expected, rtol=1e-5, atol=1e-5)
    assert len(model.graph.initializers) == 2 * len(keep) + 2


def test_block_that_is_the_whole_graph_keeps_input_and_output() -> None:
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["x", "h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [nh.from_array(np.eye(4, dtype=np.float32), "W")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    DropLayersPass(blocks=("layer0",))(model)
    assert [n.op_type for n in model.graph] == ["Identity"]
    assert [v.name for v in model.graph.inputs] == ["x"] and [v.name for v in model.graph.outputs] == ["y"]
    feeds = _data("x", (3, 4))[0]
    np.testing.assert_array_equal(run_model(model, feeds)["y"], feeds["x"])


def test_repair_refits_the_next_projection() -> None:
    model = _mlp(4)
    data = _data("x", (64, 16), batches=4)
    plain, repaired = model.clone(), model.clone()
    DropLayersPass(blocks=("layer1",))(plain)
    DropLayersPass(blocks=("layer1",), repair=True, calibration=data)(repaired)
    a2 = model.graph.initializers["A2"].const_value.numpy()  # type: ignore[union-attr]
    refit = next(n for n in repaired.graph if n.name == "fc2a").inputs[1]
    assert refit is not None and refit.const_value is not None
    assert not np.allclose(refit.const_value.numpy(), a2)
    # fc2a's output in the repaired model tracks the original's better than without repair
    held_out = _data("x", (64, 16), batches=2, seed=1)
    plain_cos, _ = compare(model, plain, lambda: iter(held_out))
    repaired_cos, _ = compare(model, repaired, lambda: iter(held_out))
    assert repaired_cos > plain_cos
    assert repaired.metadata_props[DROPPED_KEY] == "layer:layer1 repaired -> layer1"


def test_repair_refits_the_next_depthwise_conv(op_counts: Callable) -> None:
    model = ir.serde.deserialize_model(residual_cnn(3))
    data = _data("x", (32, 4, 6, 6), batches=3)
    plain, repaired = model.clone(), model.clone()
    DropLayersPass(blocks=("layer1",))(plain)
    DropLayersPass(blocks=("layer1",), repair=True, calibration=data)(repaired)
    assert op_counts(repaired)["Conv"] == op_counts(model)["Conv"] - 2
    dw2 = next(n for n in repaired.graph if n.name == "dw2")
    assert dw2.inputs[1] is not None and dw2.inputs[1].const_value is not None
    assert not np.allclose(dw2.inputs[1].const_value.numpy(), model.graph.initializers["D2"].const_value.numpy())  # type: ignore[union-attr]
    held_out = _data("x", (32, 4, 6, 6), batches=2, seed=1)
    plain_cos, _ = compare(model, plain, lambda: iter(held_out))
    repaired_cos, _ = compare(model, repaired, lambda: iter(held_out))
    assert repaired_cos > plain_cos


def test_option_errors() -> None:
    data = _data("x", (4, 16))
    with pytest.raises(PassOptionError, match="either blocks"):
        DropLayersPass(blocks=("layer0",), count=1, calibration=data)
    with pytest.raises(CalibrationDataError, match="--calib DATA"):
        DropLayersPass(count=1)
    with pytest.raises(PassOptionError, match="no layer9 in this model"):
        DropLayersPass(blocks=("layer9",))(_mlp(2))
    with pytest.raises(PassOptionError, match="only 2 layer"):
        DropLayersPass(count=3, calibration=data)(_mlp(2))
