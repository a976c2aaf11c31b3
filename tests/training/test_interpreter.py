"""ONNX -> trainable torch module -> ONNX: outputs match ONNX Runtime, weights train, and go back into the graph."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.errors import UnsupportedOpError
from edgeopt.core.runtime import run_model
from edgeopt.testing import prune_models
from edgeopt.training import OnnxModule, write_back

OPS_MODEL = """
<ir_version: 9, opset_import: ["" : 20]>
ops (float[N,3,6,6] x) => (float[N,4] y, float[N,3,2,3] z) {
    p = Pad<mode="reflect">(x, pads)
    c = Conv<strides=[2,2], pads=[0,0,1,1]>(p, w, b)
    bn = BatchNormalization(c, gamma, beta, mean, var)
    h = HardSwish(bn)
    a = AveragePool<kernel_shape=[3,3], pads=[1,1,1,1], strides=[1,1]>(h)
    g = GlobalAveragePool(a)
    f = Flatten(g)
    s = Slice(f, starts, ends, axes)
    e = Gelu(s)
    y = Softmax(e)
    t = Transpose<perm=[0,2,3,1]>(x)
    r = ReduceMean<keepdims=0>(t, rax)
    q = Gather<axis=1>(r, idx)
    z = Where(cond, q, q)
}
"""


def _ops_model() -> ir.Model:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(OPS_MODEL)
    weights = {
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "w": rng.standard_normal((6, 3, 3, 3)) * 0.3,
        "b": rng.standard_normal(6), "gamma": rng.random(6) + 0.5, "beta": rng.standard_normal(6),
        "mean": rng.standard_normal(6) * 0.1, "var": rng.random(6) + 0.5,
        "starts": np.array([1], np.int64), "ends": np.array([5], np.int64), "axes": np.array([1], np.int64),
        "rax": np.array([2], np.int64), "idx": np.array([[0, 5], [2, 3], [1, 1]], np.int64),
        "cond": np.array([True, False, True]),
    }
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(
        v.astype(np.float32) if v.dtype.kind == "f" else v, k) for k, v in weights.items())
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


MODELS = {
    "digits_cnn": lambda: ir.load(ONNX_MODEL),
    "attention": prune_models.attention,
    "transformer_block": prune_models.transformer_block,
    "ops": _ops_model,
}


def _feeds(model: ir.Model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"digits_cnn": (5, 1, 8, 8), "block": (3, 6, 16), "attn": (2, 5, 16), "ops": (2, 3, 6, 6)}
    shape = shapes.get(model.graph.name or "", (2, 1, 8, 8))
    return {model.graph.inputs[0].name or "": rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_module_reproduces_onnx_runtime(name: str) -> None:
    model = MODELS[name]()
    feeds = _feeds(model)
    want = run_model(model, feeds)
    got = OnnxModule(model).run({k: torch.from_numpy(v) for k, v in feeds.items()})
    assert list(got) == list(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key].detach().numpy(), value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trained_weights_go_back_into_the_same_graph(name: str) -> None:
    model = MODELS[name]()
    feeds = _feeds(model)
    module = OnnxModule(model)
    floats = [k for k, v in model.graph.initializers.items() if v.dtype is not None and v.dtype.is_floating_point()]
    fixed = {"mean", "var"}  # BatchNorm statistics stay buffers
    assert len(list(module.parameters())) == len(set(floats) - fixed)  # every other float weight trains
    loss = sum(o.float().square().mean() for o in module(*(torch.from_numpy(v) for v in feeds.values())))
    torch.optim.SGD(module.parameters(), lr=0.05).zero_grad()
    loss.backward()  # type: ignore[union-attr]
    with torch.no_grad():
        for p in module.parameters():
            assert p.grad is not None
            p -= 0.05 * p.grad
    trained = copy.deepcopy(model)
    assert write_back(module, trained) > 0
    proto = ir.serde.serialize_model(trained)
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in trained.graph] == [n.op_type for n in model.graph]
    assert [v.name for v in trained.graph.inputs] == [v.name for v in model.graph.inputs]
    assert [v.name for v in trained.graph.outputs] == [v.name for v in model.graph.outputs]
    want = module.run({k: torch.from_numpy(v) for k, v in feeds.items()})
    got = run_model(trained, feeds)
    for key, value in got.items():
        np.testing.assert_allclose(value, want[key].detach().numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(run_model(model, feeds)[next(iter(got))], next(iter(got.values())))


def test_qdq_runs_as_fake_quantization_with_straight_through_gradients() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 18]>
    qdq (float[N,4] x) => (float[N,3] y) {
        q = QuantizeLinear(x, s, zp)
        d = DequantizeLinear(q, s, zp)
        wd = DequantizeLinear<axis=0>(wq, ws)
        y = Gemm<transB=1>(d, wd, b)
    }
    """
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    inits = {"s": np.float32(0.05), "zp": np.uint8(128), "wq": rng.integers(-127, 128, (3, 4)).astype(np.int8),
             "ws": np.array([0.01, 0.02, 0.03], np.float32), "b": np.zeros(3, np.float32)}
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items())
    model = ir.serde.deserialize_model(proto)
    x = rng.standard_normal((8, 4)).astype(np.float32) * 4  # some values clip at the int8 range
    module = OnnxModule(model)
    assert [k for k, _ in module.named_parameters()] == ["weights.w4_b"]  # scales and int8 weights stay fixed
    xt = torch.from_numpy(x).requires_grad_()
    (y,) = module(xt)
    np.testing.assert_allclose(y.detach().numpy(), run_model(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    y.sum().backward()
    inside = np.abs(x / 0.05) < 127
    assert xt.grad is not None and (xt.grad.numpy()[~inside] == 0).all() and (xt.grad.numpy()[inside] != 0).any()


def test_an_unsupported_op_is_named_in_one_line() -> None:
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 18]>
    g (float[N,4] x) => (float[N,4] y) {
        y = Hardmax(x)
    }
    """)
    model = ir.serde.deserialize_model(proto)
    model.graph.node(0).name = "hm"
    with pytest.raises(UnsupportedOpError, match=r"node 'hm' \(ai.onnx::Hardmax\) has no torch implementation"):
        OnnxModule(model)
