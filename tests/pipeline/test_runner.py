"""Tests for edgeopt.pipeline.runner: step reports, verification and rollback.

The passes here are test-only, some of them wrong on purpose; ``register_passes`` puts
them in the registry for one test.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.core.errors import (
    ModelSaveError,
    PassOptionError,
    UnsupportedOpError,
    UnsupportedOpsetError,
    VerificationError,
)
from edgeopt.core.model_io import SOURCE_PATH_KEY, load_model, save_model
from edgeopt.core.runtime import compare_outputs, random_feeds, run_model
from edgeopt.pipeline.runner import PRESET_ROUNDS, Pipeline, StepResult, run_passes

MODEL_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2, 3] x) => (float[2, 3] y)
<float[3] b = {0.25, 0.5, 1.5}>
{
    t = Identity(x)
    r = Relu(t)
    y = Add(r, b)
}
"""


def _model() -> ir.Model:
    return ir.from_onnx_text(MODEL_TEXT)


def _nodes(model: ir.Model, op_type: str) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == op_type]


def _op_types(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph]


def _check(model: ir.Model) -> None:
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def _assert_same_outputs(before: dict, after: dict) -> None:
    deviation = compare_outputs(before, after, rtol=1e-5, atol=1e-6)
    assert deviation.ok, deviation.mismatches


# --- test-only passes --------------------------------------------------------------------


class RemoveIdentityPass(ir.passes.InPlacePass):
    """Remove Identity nodes that don't produce a graph output."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = 0
        for node in list(model.graph):
            if node.op_type == "Identity" and not node.outputs[0].is_graph_output():
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                model.graph.remove(node, safe=True)
                removed += 1
        return ir.passes.PassResult(model, modified=removed > 0)


class AddToSubPass(ir.passes.InPlacePass):
    """Wrong on purpose: turns every Add into a Sub."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in _nodes(model, "Add"):
            node.op_type = "Sub"
        return ir.passes.PassResult(model, modified=True)


class ReluToAbsPass(ir.passes.InPlacePass):
    """Wrong on purpose, but only for negative inputs."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in _nodes(model, "Relu"):
            node.op_type = "Abs"
        return ir.passes.PassResult(model, modified=True)


class RoundBiasPass(ir.passes.InPlacePass):
    """Round initializers to integers; changes outputs by design."""

    preserves_semantics = False

    def __init__(self, *, decimals: int = 0) -> None:
        super().__init__()
        self.decimals = decimals

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for value in model.graph.initializers.values():
            rounded = np.round(value.const_value.numpy(), self.decimals)
            value.const_value = ir.tensor(rounded, name=value.name)
        return ir.passes.PassResult(model, modified=True)


class FailHalfwayPass(ir.passes.InPlacePass):
    """Removes the Identity, changes the bias, then crashes."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        RemoveIdentityPass()(model)
        bias = model.graph.initializers["b"]
        bias.const_value = ir.tensor(np.zeros(3, np.float32), name="b")
        raise RuntimeError("boom: half done\nsecond line of detail")


class FailWithEdgeoptErrorPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise UnsupportedOpError("g: op 'Relu' is not supported here. Remove it first.")


class BogusAttributePass(ir.passes.InPlacePass):
    """Produces a model the checker rejects."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in _nodes(model, "Add"):
            node.attributes["bogus"] = ir.AttrInt64("bogus", 1)
        return ir.passes.PassResult(model, modified=True)


class NeedsOpset99Pass(ir.passes.InPlacePass):
    """Its precondition raises one of edgeopt's errors."""

    def requires(self, model: ir.Model) -> None:
        raise UnsupportedOpsetError(
            "g: opset 18 is below 99, the minimum for 'needs-opset-99'. Convert first."
        )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise AssertionError("call() must not run when requires() fails")


class NeedsShapesPass(ir.passes.InPlacePass):
    """Its precondition raises onnx-ir's own PreconditionError."""

    def requires(self, model: ir.Model) -> None:
        raise ir.passes.PreconditionError("needs shapes; run shape inference first")

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise AssertionError("call() must not run when requires() fails")


class WidenBiasPass(ir.passes.InPlacePass):
    """Makes the bias one element longer: valid for the checker, fails in ORT."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        bias = model.graph.initializers["b"]
        bias.const_value = ir.tensor(np.ones(4, np.float32), name="b")
        bias.shape = ir.Shape([4])
        return ir.passes.PassResult(model, modified=True)


@pytest.fixture(autouse=True)
def _test_passes(register_passes) -> None:
    register_passes(
        {
            "remove-identity": RemoveIdentityPass,
            "add-to-sub": AddToSubPass,
            "relu-to-abs": ReluToAbsPass,
            "round-bias": RoundBiasPass,
            "fail-halfway": FailHalfwayPass,
            "fail-with-edgeopt-error": FailWithEdgeoptErrorPass,
            "bogus-attribute": BogusAttributePass,
            "needs-opset-99": NeedsOpset99Pass,
            "needs-shapes": NeedsShapesPass,
            "widen-bias": WidenBiasPass,
        },
        presets={"test-preset": ("remove-identity", "remove-identity")},
    )


# --- running and reporting ---------------------------------------------------------------


@pytest.mark.parametrize("verify", [False, True])
def test_semantics_preserving_pass_runs_and_reports(verify: bool) -> None:
    model = _model()
    feeds = random_feeds(model)
    expected = run_model(model, feeds)
    seen: list[StepResult] = []

    result = Pipeline(["remove-identity", "remove-identity"], verify=verify).run(
        model, on_step=seen.append
    )

    assert result.modified
    assert [s.name for s in result.steps] == ["remove-identity", "remove-identity"]
    first, second = result.steps
    assert (first.modified, first.nodes_before, first.nodes_after) == (True, 3, 2)
    assert (second.modified, second.nodes_before, second.nodes_after) == (False, 2, 2)
    assert first.error is None and first.seconds >= 0.0
    assert seen == result.steps
    assert result.model is model  # in place
    assert _op_types(result.model) == ["Relu", "Add"]
    assert [v.name for v in result.model.graph.outputs] == ["y"]
    _check(result.model)
    _assert_same_outputs(expected, run_model(result.model, feeds))
    if verify:
        assert first.deviation is not None and first.deviation.ok
        assert first.deviation.max_abs == 0.0
    else:
        assert first.deviation is None


def test_steps_from_names_presets_options_and_instances() -> None:
    pipeline = Pipeline(["test-preset", ("round-bias", {"decimals": 1}), AddToSubPass()])

    assert pipeline.names == ["remove-identity", "remove-identity", "round-bias", "AddToSubPass"]
    assert pipeline.steps[2].pass_.decimals == 1
    assert not pipeline.steps[2].preserves_semantics
    assert pipeline.steps[0].preserves_semantics


def test_bad_step_specs_are_rejected() -> None:
    with pytest.raises(PassOptionError, match="unknown pass 'remove-identty'.*'remove-identity'"):
        Pipeline(["remove-identty"])
    with pytest.raises(PassOptionError, match="option 'decimals' expects int, got '1'"):
        Pipeline([("round-bias", {"decimals": "1"})])
    with pytest.raises(PassOptionError, match="preset 'test-preset' has no pass 'decimals'"):
        Pipeline([("test-preset", {"decimals": 1})])
    with pytest.raises(ValueError, match="on_error must be 'rollback' or 'raise'"):
        Pipeline(["remove-identity"], on_error="ignore")  # type: ignore[arg-type]


def test_run_passes_shorthand() -> None:
    result = run_passes(_model(), ["remove-identity"], verify=True)

    assert result.modified
    assert _op_types(result.model) == ["Relu", "Add"]


# --- verification ------------------------------------------------------------------------


def test_verify_catches_a_wrong_pass() -> None:
    with pytest.raises(
        VerificationError,
        match=r"pass 'add-to-sub' changed the model's outputs: y: max abs error",
    ):
        Pipeline(["remove-identity", "add-to-sub"], verify=True).run(_model())

    # Without verify the same pass goes through, which is why verify exists.
    model = _model()
    result = Pipeline(["add-to-sub"]).run(model)
    assert _op_types(result.model) == ["Identity", "Relu", "Sub"]


def test_verify_uses_given_feeds() -> None:
    positive = {"x": np.abs(random_feeds(_model())["x"]) + 0.1}

    # relu == abs on positive inputs, so these feeds can't tell them apart ...
    result = Pipeline(["relu-to-abs"], verify=True, feeds=positive).run(_model())
    assert _op_types(result.model) == ["Identity", "Abs", "Add"]
    assert result.steps[0].deviation is not None and result.steps[0].deviation.ok

    # ... but the default random (standard normal) inputs can.
    with pytest.raises(VerificationError, match="pass 'relu-to-abs' changed the model's outputs"):
        Pipeline(["relu-to-abs"], verify=True).run(_model())


def test_verify_reuses_pipeline_on_models_with_other_inputs() -> None:
    other = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[4] a, float[4] c) => (float[4] y) { y = Add(a, c) }
        """
    )
    pipeline = Pipeline(["add-to-sub"], verify=True)

    with pytest.raises(VerificationError, match="pass 'add-to-sub'"):
        pipeline.run(_model())
    # Random feeds are made for each model, not kept from the first one.
    with pytest.raises(VerificationError, match="pass 'add-to-sub'"):
        pipeline.run(other)


def test_lossy_pass_is_allowed_and_its_deviation_reported() -> None:
    model = _model()
    feeds = random_feeds(model)
    expected = run_model(model, feeds)

    result = Pipeline(["round-bias", "remove-identity"], verify=True, feeds=feeds).run(model)

    lossy, after = result.steps
    assert lossy.deviation is not None and not lossy.deviation.ok
    assert lossy.deviation.max_abs == pytest.approx(0.5)  # 0.25 -> 0, 0.5 -> 0, 1.5 -> 2
    assert lossy.deviation.worst_output == "y"
    assert lossy.deviation.mismatches[0].startswith("y: max abs error 0.5")
    # The next pass is compared with the rounded model, not the original.
    assert after.deviation is not None and after.deviation.ok
    np.testing.assert_allclose(
        run_model(result.model, feeds)["y"], np.maximum(feeds["x"], 0) + [0.0, 0.0, 2.0]
    )
    assert not compare_outputs(expected, run_model(result.model, feeds)).ok


def test_verify_rejects_checker_invalid_model() -> None:
    with pytest.raises(
        VerificationError,
        match=r"pass 'bogus-attribute' produced an invalid model: .*bogus",
    ):
        Pipeline(["bogus-attribute"], verify=True).run(_model())


def test_verify_rejects_model_ort_cannot_run() -> None:
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[N, M] x) => (float[N, M] y)
        <float[3] b = {0.25, 0.5, 1.5}>
        {
            y = Add(x, b)
        }
        """
    )
    feeds = {"x": np.ones((2, 3), np.float32)}

    with pytest.raises(
        VerificationError, match="pass 'widen-bias' produced a model ONNX Runtime cannot run"
    ):
        Pipeline(["widen-bias"], verify=True, feeds=feeds).run(model)


def test_verify_with_input_model_ort_cannot_run(caplog: pytest.LogCaptureFixture) -> None:
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 18, "com.example" : 1]>
        g (float[2] x) => (float[2] y)
        {
            t = Identity(x)
            y = com.example.Custom(t)
        }
        """
    )

    with caplog.at_level(logging.WARNING, logger="edgeopt.pipeline.runner"):
        result = Pipeline(["remove-identity"], verify=True).run(model)

    assert "does not run in ONNX Runtime" in caplog.text
    assert _op_types(result.model) == ["Custom"]
    assert result.steps[0].deviation is None


# --- errors and rollback -----------------------------------------------------------------


def test_failing_pass_is_rolled_back() -> None:
    model = _model()
    feeds = random_feeds(model)
    expected = run_model(model, feeds)

    result = Pipeline(["fail-halfway", "remove-identity"], verify=True).run(model)

    failed, after = result.steps
    assert failed.error == "boom: half done"
    assert not failed.modified
    assert failed.nodes_before == failed.nodes_after == 3
    assert after.error is None and after.modified  # the next pass ran on the restored model
    _check(result.model)
    _assert_same_outputs(expected, run_model(result.model, feeds))
    np.testing.assert_array_equal(
        result.model.graph.initializers["b"].const_value.numpy(), [0.25, 0.5, 1.5]
    )


def test_failing_pass_propagates_with_on_error_raise() -> None:
    with pytest.raises(RuntimeError, match="boom: half done"):
        Pipeline(["fail-halfway"], on_error="raise").run(_model())


def test_rollback_keeps_source_path(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path / "m.onnx")
    model = load_model(path)

    result = Pipeline(["fail-halfway"]).run(model)

    assert result.steps[0].error is not None
    assert result.model.meta[SOURCE_PATH_KEY] == str(path)
    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
        save_model(result.model, path)


@pytest.mark.parametrize("on_error", ["rollback", "raise"])
def test_edgeopt_error_from_requires_is_raised_as_is(on_error: str) -> None:
    model = _model()

    with pytest.raises(UnsupportedOpsetError, match="opset 18 is below 99"):
        Pipeline(["needs-opset-99"], on_error=on_error).run(model)  # type: ignore[arg-type]

    assert _op_types(model) == ["Identity", "Relu", "Add"]


@pytest.mark.parametrize("on_error", ["rollback", "raise"])
def test_edgeopt_error_from_call_propagates(on_error: str) -> None:
    with pytest.raises(UnsupportedOpError, match="op 'Relu' is not supported here"):
        Pipeline(["fail-with-edgeopt-error"], on_error=on_error).run(_model())  # type: ignore[arg-type]


@pytest.mark.parametrize("on_error", ["rollback", "raise"])
def test_plain_precondition_error_is_raised(on_error: str) -> None:
    with pytest.raises(ir.passes.PreconditionError, match="needs shapes"):
        Pipeline(["needs-shapes"], on_error=on_error).run(_model())  # type: ignore[arg-type]


def test_preset_skips_passes_whose_precondition_fails(register_passes) -> None:
    register_passes({}, presets={"test-mixed": ("needs-opset-99", "needs-shapes",
                                                "remove-identity")})

    result = Pipeline(["test-mixed"], verify=True).run(_model())

    opset, shapes, removed = result.steps[:3]  # a second round finds nothing more to do
    assert [s.modified for s in result.steps[3:]] == [False, False, False]
    assert opset.skipped is not None and "opset 18 is below 99" in opset.skipped
    assert shapes.skipped == "needs shapes; run shape inference first"
    assert not opset.modified and opset.error is None
    assert removed.skipped is None and removed.modified
    assert _op_types(result.model) == ["Relu", "Add"]


def test_preset_options_are_keyed_by_the_passes_inside(register_passes) -> None:
    register_passes({}, presets={"test-two": ("remove-identity", "round-bias")})
    pipeline = Pipeline([("test-two", {"round-bias": {"decimals": 2}})])
    assert pipeline.names == ["remove-identity", "round-bias"]
    assert pipeline.steps[1].pass_.decimals == 2
    assert pipeline.steps[0].from_preset and pipeline.steps[1].from_preset


def test_verify_compares_sequence_outputs() -> None:
    model = ir.from_onnx_text("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[5] x) => (seq(float) s) {
            i = Identity(x)
            s = SplitToSequence <axis = 0> (i, split)
        }
    """)
    split = ir.Value(name="split", const_value=ir.tensor(np.array([2, 3], np.int64), name="split"))
    model.graph.register_initializer(split)
    model.graph.node(1).replace_input_with(1, split)
    result = Pipeline(["remove-identity"], verify=True).run(model)
    assert result.steps[0].modified
    assert result.steps[0].deviation is not None and result.steps[0].deviation.ok


def test_preset_repeats_until_nothing_changes(register_passes) -> None:
    register_passes({}, presets={"test-one": ("remove-identity",),
                                 "test-never-done": ("remove-identity", "round-bias")})
    result = Pipeline(["test-one"]).run(_model())
    assert [s.modified for s in result.steps] == [True, False]
    # round-bias always reports a change: the rounds stop at the bound
    result = Pipeline(["test-never-done"]).run(_model())
    assert len(result.steps) == 2 * PRESET_ROUNDS
