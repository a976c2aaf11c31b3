"""Load-time and verb-time model checks (references, IR, opsets, domains, finite weights) and random inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import helper
from onnx import numpy_helper as nh

from edgeopt.core.errors import ModelLoadError, NonFiniteWeightsError, UnsupportedOpError, UnsupportedOpsetError
from edgeopt.core.model_checks import check_model, model_problems
from edgeopt.core.model_io import load_model
from edgeopt.core.references import undefined_reads
from edgeopt.core.runtime import random_feeds, run_model
from edgeopt.testing.bad_models import good_model, text_encoder


def _parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


# --- references and IR, at load --------------------------------------------------------------


def test_unsorted_graphs_and_outer_scope_reads_are_defined() -> None:
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] z) {
            z = If(c) <then_branch = t () => (float[2] a) { a = Relu(y) },
                       else_branch = e () => (float[2] b) { b = Neg(y) }>
            y = Abs(x)
        }""")

    assert undefined_reads(model) == []
    load_model(model)


def test_an_undefined_read_inside_a_subgraph_is_found() -> None:
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] z) {
            z = If(c) <then_branch = t () => (float[2] a) { a = Relu(x) },
                       else_branch = e () => (float[2] b) { b = Neg(ghost) }>
        }""")

    (read,) = undefined_reads(model)
    assert (read.op, read.name) == ("Neg", "ghost")
    with pytest.raises(ModelLoadError, match="reads 'ghost', which nothing in the graph defines.*re-export it"):
        load_model(model)


def test_a_function_body_reads_only_its_inputs_and_outputs() -> None:
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.F(x) }
        <domain: "local", opset_import: ["" : 17]>
        F (a) => (b) { t = Relu(a) b = Add(t, stray) }""")

    assert [r.name for r in undefined_reads(model)] == ["stray"]


def test_an_ir_version_newer_than_onnx_is_refused_at_load() -> None:
    model = good_model()
    model.ir_version = 99

    with pytest.raises(ModelLoadError, match=r"IR version 99 is newer than this onnx .* upgrade onnx"):
        load_model(model)


# --- what the verbs check ----------------------------------------------------------------------


def test_the_good_model_has_no_problem() -> None:
    assert model_problems(load_model(good_model())) == []


def test_an_opset_onnx_runtime_does_not_know_says_what_to_do() -> None:
    model = good_model()
    model.opset_import[0].version = 99

    with pytest.raises(UnsupportedOpsetError, match="cannot load opset 99 of domain 'ai.onnx'. Re-export"):
        check_model(load_model(model))
    check_model(load_model(model), opsets=False)  # a verb that converts the opset skips this


def test_unknown_domains_are_refused_unless_a_function_defines_them() -> None:
    unknown = _parse("""
        <ir_version: 10, opset_import: ["" : 17, "com.acme" : 1]>
        g (float[2] x) => (float[2] y) { y = com.acme.Foo(x) }""")
    local = _parse("""
        <ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[2] x) => (float[2] y) { y = local.F(x) }
        <domain: "local", opset_import: ["" : 17]>
        F (a) => (b) { b = Relu(a) }""")

    with pytest.raises(UnsupportedOpError, match=r"\(com.acme::Foo\) use a domain .* Replace them"):
        check_model(load_model(unknown))
    check_model(load_model(local))


@pytest.mark.parametrize("value, kind", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_weights_are_named(value: float, kind: str) -> None:
    model = good_model()
    array = nh.to_array(model.graph.initializer[0]).copy()
    array[0, 0] = value
    model.graph.initializer[0].CopyFrom(nh.from_array(array, "A0"))

    with pytest.raises(NonFiniteWeightsError, match=f"weight 'A0' of MatMul node 'fc0a' holds 1 {kind} value"):
        check_model(load_model(model))
    check_model(load_model(model), weights=False)


def test_a_minus_inf_attention_mask_is_no_weight() -> None:
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[2, 2] x) => (float[2, 2] y) {
            mask = Constant <value = float[2, 2] {0, -inf, 0, 0}> ()
            s = Add(x, mask)
            y = Softmax(s)
        }""")

    assert model_problems(load_model(model)) == []


def test_a_nan_constant_node_read_as_a_weight_is_found() -> None:
    model = _parse("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, 2] x) => (float[1, 2] y) {
            w = Constant <value = float[2, 2] {1, nan, 0, 1}> ()
            y = MatMul(x, w)
        }""")

    (problem,) = model_problems(load_model(model))
    assert problem.error is NonFiniteWeightsError and "1 NaN" in problem.message


# --- random inputs that respect the model --------------------------------------------------------


def test_random_token_ids_stay_inside_their_tables_and_masks_are_ones() -> None:
    model = load_model(text_encoder(vocab=50))

    for seed in range(5):
        feeds = random_feeds(model, seed=seed, default_dim=16)
        assert feeds["input_ids"].max() < 50 and feeds["input_ids"].max() >= 4  # the vocabulary, not [0, 4)
        assert (feeds["attention_mask"] == 1).all() and (feeds["token_type_ids"] == 0).all()
        run_model(model, feeds)


def test_indices_reached_through_cast_and_reshape_are_bounded() -> None:
    table = helper.make_tensor("T", onnx.TensorProto.FLOAT, [3, 2], np.zeros(6, np.float32))
    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["i32"], to=onnx.TensorProto.INT32),
         helper.make_node("Reshape", ["i32", "shape"], ["flat"]),
         helper.make_node("Gather", ["T", "flat"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N", 8]),
         helper.make_tensor_value_info("count", onnx.TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [table, nh.from_array(np.array([-1], np.int64), "shape")])
    model = load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    feeds = random_feeds(model, default_dim=64)

    assert feeds["ids"].max() == 2  # rows 0..2 of T
    assert feeds["count"].max() == 3  # not an index: [0, 4) as before
