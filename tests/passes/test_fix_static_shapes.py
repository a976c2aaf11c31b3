"""Tests for fix-static-shapes: every dynamic dim gets a size, values unchanged."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import run_model
from edgeopt.passes import FixStaticShapesPass
from edgeopt.passes.fix_static_shapes import dynamic_dims
from edgeopt.pipeline.registry import get_pass

# A toy encoder block: token ids and a float sequence share (N, seq); Shape-driven
# Reshape, a MatMul, a mean over the sequence, and an output whose size depends on both.
TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
block (float[N, seq, 4] x, int64[N, seq] ids) => (float[N, seq, 4] y, float[N, 4] pooled, float[M] flat)
{
    s = Shape(x)
    r = Reshape(x, s)
    c = Cast<to = 1>(ids)
    ax = Constant<value_ints = [2]>()
    u = Unsqueeze(c, ax)
    a = Add(r, u)
    y = MatMul(a, W)
    one = Constant<value_ints = [1]>()
    pooled = ReduceMean<keepdims = 0>(y, one)
    m = Constant<value_ints = [-1]>()
    flat = Reshape(y, m)
}
"""


def _model() -> ir.Model:
    proto = onnx.parser.parse_model(TEXT)
    weight = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    return ir.serde.deserialize_model(proto)


def _all_dims_static(model: ir.Model) -> bool:
    values = [*model.graph.inputs, *model.graph.outputs, *(o for n in model.graph for o in n.outputs)]
    return all(v.shape is not None and all(isinstance(d, int) for d in v.shape) for v in values)


def test_fixes_every_dynamic_dim_and_keeps_values(apply_pass: Callable[..., ir.passes.PassResult],
                                                  op_counts: Callable) -> None:
    model = _model()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((2, 5, 4)).astype(np.float32),
             "ids": rng.integers(0, 4, (2, 5)).astype(np.int64)}
    expected = run_model(model, feeds)
    assert len(dynamic_dims(model)) == 4

    result = apply_pass(FixStaticShapesPass(batch_size=2, max_sequence_length=5), model, feeds)

    assert result.modified
    assert dynamic_dims(model) == []
    assert _all_dims_static(model), "an intermediate or output value kept a dynamic dim"
    assert [list(v.shape) for v in model.graph.inputs] == [[2, 5, 4], [2, 5]]
    assert [list(v.shape) for v in model.graph.outputs] == [[2, 5, 4], [2, 4], [40]]
    assert op_counts(model)["Shape"] == 0, "Shape of a now static tensor should fold away"
    np.testing.assert_allclose(run_model(model, feeds)["pooled"], expected["pooled"], rtol=1e-6)


def test_named_dims_win_and_batch_defaults_to_one() -> None:
    model = _model()

    FixStaticShapesPass(dims={"seq": 7})(model)

    assert [list(v.shape) for v in model.graph.inputs] == [[1, 7, 4], [1, 7]]
    feeds = {"x": np.ones((1, 7, 4), np.float32), "ids": np.zeros((1, 7), np.int64)}
    assert run_model(model, feeds)["flat"].shape == (28,)


def test_second_run_changes_nothing() -> None:
    model = _model()
    FixStaticShapesPass(max_sequence_length=3)(model)

    assert not FixStaticShapesPass(max_sequence_length=3)(model).modified


def test_static_model_is_left_alone() -> None:
    model = ir.from_onnx_text("""
    <ir_version: 10, opset_import: ["" : 17]>
    s (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }
    """)
    assert not FixStaticShapesPass()(model).modified


def test_dynamic_dim_without_a_size_names_it() -> None:
    model = _model()
    with pytest.raises(PassOptionError, match=r"input 'x' axis 1 \('seq'\) is dynamic.*dims=\{seq: SIZE\}"):
        FixStaticShapesPass()(model)


def test_rejects_non_positive_sizes() -> None:
    with pytest.raises(PassOptionError, match="batch_size=0"):
        FixStaticShapesPass(batch_size=0)
    with pytest.raises(PassOptionError, match="dims.seq=-1"):
        FixStaticShapesPass(dims={"seq": -1})


def test_registry_options() -> None:
    created = get_pass("fix-static-shapes").create({"dims": {"seq": 8}, "batch_size": 2})
    assert isinstance(created, FixStaticShapesPass)
    assert (created.dims, created.batch_size) == ({"seq": 8}, 2)


def test_non_strict_leaves_a_dim_without_size_dynamic() -> None:
    model = _model()

    assert FixStaticShapesPass(strict=False)(model).modified

    assert [list(v.shape) for v in model.graph.inputs] == [[1, "seq", 4], [1, "seq"]]
    assert dynamic_dims(model) == [("x", 1, "seq"), ("ids", 1, "seq")]
    feeds = {"x": np.ones((1, 3, 4), np.float32), "ids": np.zeros((1, 3), np.int64)}
    assert run_model(model, feeds)["y"].shape == (1, 3, 4)
