"""Finding droppable blocks from the graph structure: transformers (pre- and post-LN), ResNet
blocks, and what must not count as a block (a broadcast Add, a block whose inside leaks)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper
from onnx import numpy_helper as nh
from torch import nn

from edgeopt.blocks.residual import find_blocks
from edgeopt.exporting.torch_export import export
from edgeopt.testing.residual_models import residual_mlp

LAYERS = 3


def _encoder(norm_first: bool) -> ir.Model:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
    for p in encoder.parameters():  # distinct weights per layer (identical copies get deduplicated)
        p.data.normal_(0, 0.2)
    return export(encoder, torch.randn(2, 5, 16), dynamic_axes={"src": {0: "batch", 1: "seq"}}).model


@pytest.fixture(scope="module", params=[False, True], ids=["post-ln", "pre-ln"])
def encoder(request: pytest.FixtureRequest) -> tuple[bool, ir.Model]:
    return request.param, _encoder(request.param)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels),
                               nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.f(x))


def test_transformer_layers_and_blocks(encoder: tuple[bool, ir.Model]) -> None:
    norm_first, model = encoder
    producers = {o.name: n.op_type for n in model.graph for o in n.outputs}
    layers = find_blocks(model, "layer")
    assert [b.name for b in layers] == [f"layer{i}" for i in range(LAYERS)]
    assert all(b.droppable and b.attention for b in layers), [b.reason for b in layers]
    # layers are chained: each starts where the previous one ends
    assert [b.start for b in layers[1:]] == [b.end for b in layers[:-1]]
    assert layers[0].start == "src"
    # post-LN: a layer ends at its second LayerNormalization; pre-LN: at its second Add
    expected_end = "Add" if norm_first else "LayerNormalization"
    assert {producers[b.end] for b in layers} == {expected_end}
    blocks = find_blocks(model, "block")
    assert len(blocks) == 2 * LAYERS
    assert [b.attention for b in blocks] == [True, False] * LAYERS
    assert {producers[b.end] for b in blocks} == {"Add"}
    layer_nodes = {n for b in layers for n in b.nodes}
    assert {n for b in blocks for n in b.nodes} <= layer_nodes


def test_resnet_blocks_with_depthwise_convs() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), *[_ResBlock(8) for _ in range(3)],
                        nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    model = export(net, torch.randn(2, 1, 8, 8), dynamic_axes={"input": {0: "batch"}}).model
    layers = find_blocks(model, "layer")
    producers = {o.name: n.op_type for n in model.graph for o in n.outputs}
    assert len(layers) == 3 and all(b.droppable and not b.attention for b in layers)
    assert {producers[b.end] for b in layers} == {"Relu"}  # the block's trailing ReLU goes with it
    assert all(b.parameters == 8 * 9 + 8 + 8 * 8 + 8 for b in layers)  # depthwise + pointwise, BN folded
    blocks = find_blocks(model, "block")
    assert {producers[b.end] for b in blocks} == {"Add"}
    # each block's Add feeds exactly its layer's ReLU
    users = {o.name: [u.outputs[0].name for u, _ in o.uses()] for n in model.graph for o in n.outputs}
    assert [users[b.end] for b in blocks] == [[layer.end] for layer in layers]


def test_residual_mlp_without_shapes_infers_them() -> None:
    model = ir.serde.deserialize_model(residual_mlp(3))  # no value_info: shapes come from inference
    blocks = find_blocks(model)
    assert [(b.start, b.end) for b in blocks] == [("x", "x1"), ("x1", "x2"), ("x2", "x3")]
    assert all(b.droppable for b in blocks)
    assert [b.parameters for b in blocks] == [2 * 16 * 16] * 3


def _graph_model(nodes: list, outputs: list, inits: list) -> ir.Model:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              outputs, inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_broadcast_add_is_not_a_block() -> None:
    w = nh.from_array(np.ones((4, 1), np.float32), "W")
    model = _graph_model(  # y = x + s (s[N,1] broadcasts): a block; z = y + s: s[N,1] is no residual of z[N,4]
        [helper.make_node("MatMul", ["x", "W"], ["s"]), helper.make_node("Add", ["x", "s"], ["y"], name="add_y"),
         helper.make_node("Add", ["y", "s"], ["z"], name="add_z")],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])], [w])
    blocks = find_blocks(model, "block")
    assert [(b.start, b.end, b.droppable) for b in blocks] == [("x", "y", False)]
    assert blocks[0].reason == "'s' inside the block also feeds node 'add_z'"


def test_block_whose_inside_feeds_the_outside_is_not_droppable() -> None:
    w = nh.from_array(np.eye(4, dtype=np.float32), "W")
    model = _graph_model(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("Add", ["x", "r"], ["y"], name="add")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 4])], [w])
    [block] = find_blocks(model, "block")
    assert not block.droppable
    assert block.reason == "'h' inside the block also feeds a graph output"
