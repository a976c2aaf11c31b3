"""Tests for the ``cleanup`` preset: every clean-up pass, in order, on one messy model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.runtime import compare_outputs, random_feeds, run_model
from edgeopt.passes import PRESETS
from edgeopt.pipeline.runner import Pipeline, cleanup


def _messy_model() -> ir.Model:
    """One of each thing cleanup removes.

    - a Conv weight held in a Constant node (lift-constants), followed by a BatchNorm
      (fold-batchnorm), an Identity and a Dropout (eliminate-identity);
    - two Convs with byte-identical weights (deduplicate-initializers);
    - a constant subexpression ``k1 * k2`` (fold-constants);
    - a dead branch ``Exp(Neg(x))`` (remove-unused);
    - an Identity producing the graph output.
    """
    rng = np.random.default_rng(0)
    conv_weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    pointwise = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    bn = [
        nh.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "bn_scale"),
        nh.from_array(rng.standard_normal(4).astype(np.float32), "bn_bias"),
        nh.from_array(rng.standard_normal(4).astype(np.float32), "bn_mean"),
        nh.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "bn_var"),
    ]
    initializers = [
        *bn,
        nh.from_array(pointwise, "w_a"),
        nh.from_array(pointwise.copy(), "w_b"),
        nh.from_array(np.array([2.0], np.float32), "k1"),
        nh.from_array(np.array([0.25], np.float32), "k2"),
    ]
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=nh.from_array(conv_weight)),
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization",
                         ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b1"]),
        helper.make_node("Identity", ["b1"], ["i1"]),
        helper.make_node("Relu", ["i1"], ["r1"]),
        helper.make_node("Dropout", ["r1"], ["d1"]),
        helper.make_node("Conv", ["d1", "w_a"], ["c2"]),
        helper.make_node("Conv", ["d1", "w_b"], ["c3"]),
        helper.make_node("Add", ["c2", "c3"], ["s"]),
        helper.make_node("Mul", ["k1", "k2"], ["k"]),
        helper.make_node("Mul", ["s", "k"], ["m"]),
        helper.make_node("Neg", ["x"], ["dead1"]),
        helper.make_node("Exp", ["dead1"], ["dead2"]),
        helper.make_node("Identity", ["m"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "messy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _op_counts(model: ir.Model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_cleanup_makes_a_messy_model_smaller_and_numerically_equal(checker):
    model = _messy_model()
    feeds = random_feeds(model)
    expected = run_model(model, feeds)
    nodes_before = len(model.graph)
    initializers_before = len(model.graph.initializers)

    result = Pipeline(["cleanup"], verify=True).run(model)

    out = result.model
    preset = list(PRESETS["cleanup"])
    names = [s.name for s in result.steps]
    # the preset repeats until a round changes nothing
    assert names[: len(preset)] == preset and len(names) % len(preset) == 0
    assert not any(s.modified for s in result.steps[-len(preset):])
    assert all(s.error is None and s.skipped is None for s in result.steps)
    assert all(s.deviation is not None and s.deviation.ok for s in result.steps)
    modified = {s.name for s in result.steps if s.modified}
    assert modified >= {
        "lift-constants", "fold-constants", "eliminate-identity", "fold-batchnorm",
        "deduplicate-initializers",
    }  # the dead Neg -> Exp goes with the first pass that sweeps unused nodes
    assert _op_counts(out) == {"Conv": 3, "Relu": 1, "Add": 1, "Mul": 1}
    assert len(out.graph) < nodes_before
    # Left: folded conv weight and bias, one pointwise weight, the folded k1 * k2.
    assert len(out.graph.initializers) == 4 < initializers_before
    conv2, conv3 = (n for n in out.graph if n.op_type == "Conv" and n.inputs[0].name != "x")
    assert conv2.inputs[1] is conv3.inputs[1]
    assert [v.name for v in out.graph.inputs] == ["x"]
    assert [v.name for v in out.graph.outputs] == ["y"]
    checker(out)
    deviation = compare_outputs(expected, run_model(out, feeds), rtol=1e-5, atol=1e-6)
    assert deviation.ok, deviation.mismatches


def test_cleanup_is_idempotent(checker):
    model = Pipeline(["cleanup"]).run(_messy_model()).model

    again = Pipeline(["cleanup"]).run(model)

    assert not again.modified, [s.name for s in again.steps if s.modified]
    checker(again.model)


def test_cleanup_pass_manager_reaches_a_fixpoint(checker):
    """``edgeopt.passes.cleanup()`` is the same preset as one onnx-ir PassManager."""
    model = _messy_model()
    feeds = random_feeds(model)
    expected = run_model(model, feeds)

    result = cleanup()(model)

    assert result.modified
    assert _op_counts(result.model) == {"Conv": 3, "Relu": 1, "Add": 1, "Mul": 1}
    checker(result.model)
    deviation = compare_outputs(expected, run_model(result.model, feeds), rtol=1e-5, atol=1e-6)
    assert deviation.ok, deviation.mismatches
    assert not cleanup()(result.model).modified


def test_cleanup_leaves_a_clean_model_alone(checker):
    """Already sorted, typed (r has its value_info), with nothing to fold or remove."""
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] y)
        <float[3] b = {0.5, -1.0, 2.0}, float[2, 3] r>
        {
            r = Relu(x)
            y = Add(r, b)
        }
        """
    )
    before = ir.serde.serialize_model(model)

    result = Pipeline(["cleanup"], verify=True).run(model)

    assert not result.modified
    assert [s.name for s in result.steps] == list(PRESETS["cleanup"])
    assert ir.serde.serialize_model(result.model) == before
    checker(result.model)
