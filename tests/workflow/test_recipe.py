"""Tests for recipe files: validation with exact key paths, and running them end to end."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest

from edgeopt.core.errors import RecipeError
from edgeopt.workflow.optimize import run_recipe
from edgeopt.workflow.recipe import load_recipe

MODEL_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
net (float[N, 4] x) => (float[N, 3] y)
{
    i = Identity(x)
    m = MatMul(i, W)
    y = Relu(m)
}
"""


def _model(path: Path) -> Path:
    model = onnx.parser.parse_model(MODEL_TEXT)
    weight = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    model.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


VALID = """\
model: ../models/net.onnx
output: ../build/net.opt.onnx
passes:
  - cleanup
  - fold-constants:
      input_size_limit: 4096
verify: true
tolerance: {rtol: 1.0e-4, atol: 1.0e-5}
targets: [ort-cpu]
"""


def test_valid_recipe_resolves_paths_against_recipe_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path / "models" / "net.onnx")
    recipe_path = _write(tmp_path / "recipes" / "net.yaml", VALID)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must not depend on the working directory

    recipe = load_recipe(recipe_path)

    assert recipe.path == recipe_path
    assert recipe.model.resolve() == model
    assert recipe.output.resolve() == tmp_path / "build" / "net.opt.onnx"
    assert recipe.passes == [("cleanup", {}), ("fold-constants", {"input_size_limit": 4096})]
    assert (recipe.verify, recipe.rtol, recipe.atol, recipe.targets) == (True, 1e-4, 1e-5,
                                                                          ["ort-cpu"])

    result = run_recipe(recipe)

    out = tmp_path / "build" / "net.opt.onnx"
    artifact = tmp_path / "build" / "ort-cpu" / "model.onnx"
    assert result.output == out.resolve()
    assert result.artifacts == {"ort-cpu": artifact.resolve()}
    assert out.is_file() and artifact.is_file()
    assert not list(elsewhere.iterdir())
    for written in (out, artifact):
        proto = onnx.load(written)
        onnx.checker.check_model(proto, full_check=True)
        assert [n.op_type for n in proto.graph.node] == ["MatMul", "Relu"]
    # verify ran after every pass, and the last fold-constants carried its option
    assert all(s.deviation is not None and s.deviation.ok for s in result.pipeline.steps)
    assert result.pipeline.steps[-1].name == "fold-constants"
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    for written in (out, artifact):
        np.testing.assert_allclose(_ort(written, x), _ort(model, x), rtol=1e-5, atol=1e-6)


def test_rtol_without_dot_is_read_as_float(tmp_path: Path) -> None:
    # YAML 1.1 reads "1e-4" (no dot) as a string; the recipe accepts it as a number.
    path = _write(tmp_path / "r.yaml", "model: m.onnx\noutput: o.onnx\npasses: [cleanup]\n"
                                       "tolerance: {rtol: 1e-4, atol: 2e-3}\n")

    recipe = load_recipe(path)

    assert recipe.rtol == 1e-4 and isinstance(recipe.rtol, float)
    assert recipe.atol == 2e-3 and isinstance(recipe.atol, float)


def test_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", "model: m.onnx\noutput: o.onnx\npasses: [cleanup]\n")

    recipe = load_recipe(path)

    assert (recipe.verify, recipe.rtol, recipe.atol, recipe.targets) == (False, 1e-4, 1e-5, [])


BASE = "model: m.onnx\noutput: o.onnx\n"

ERROR_CASES = {
    "unknown top-level key": (
        BASE + "pases: [cleanup]\n",
        "pases: unknown key (did you mean 'passes'?)",
    ),
    "missing required key": (
        "model: m.onnx\npasses: [cleanup]\n",
        "output: missing; it is required.",
    ),
    "model not a path": (
        "model: 3\noutput: o.onnx\npasses: [cleanup]\n",
        "model: expects a file path, got 3.",
    ),
    "passes not a list": (
        BASE + "passes: cleanup\n",
        "passes: expects a non-empty list",
    ),
    "passes empty": (
        BASE + "passes: []\n",
        "passes: expects a non-empty list",
    ),
    "unknown pass name": (
        BASE + "passes: [cleanup, fold-constant]\n",
        "passes[1]: unknown pass 'fold-constant' (did you mean 'fold-constants'",
    ),
    "option of wrong type": (
        BASE + "passes:\n  - fold-constants: {input_size_limit: abc}\n",
        "passes[0].fold-constants: pass 'fold-constants' option 'input_size_limit' expects int, "
        "got 'abc'",
    ),
    "unknown option": (
        BASE + "passes:\n  - cleanup\n  - fold-constants: {input_size: 1}\n",
        "passes[1].fold-constants: pass 'fold-constants' has no option 'input_size' "
        "(did you mean 'input_size_limit'?)",
    ),
    "options not a mapping": (
        BASE + "passes:\n  - fold-constants: [1, 2]\n",
        "passes[0].fold-constants: options must be a mapping, got [1, 2].",
    ),
    "options on a preset, not keyed by its passes": (
        BASE + "passes:\n  - cleanup: {steps: 3}\n",
        "passes[0].cleanup: preset 'cleanup' has no pass 'steps'; its options are keyed by its passes",
    ),
    "wrong option type for a pass inside a preset": (
        BASE + "passes:\n  - cleanup: {fold-constants: {input_size_limit: big}}\n",
        "passes[0].cleanup: pass 'fold-constants' option 'input_size_limit' expects int, got 'big'",
    ),
    "pass entry of wrong shape": (
        BASE + "passes:\n  - 7\n",
        "passes[0]: expects a pass name or {name: {option: value}}, got 7.",
    ),
    "verify not bool": (
        BASE + "passes: [cleanup]\nverify: sometimes\n",
        "verify: expects true or false, got 'sometimes'.",
    ),
    "tolerance unknown key": (
        BASE + "passes: [cleanup]\ntolerance: {rtl: 1.0e-4}\n",
        "tolerance.rtl: unknown key. Known keys: atol, rtol.",
    ),
    "tolerance negative": (
        BASE + "passes: [cleanup]\ntolerance: {atol: -1.0e-5}\n",
        "tolerance.atol: expects a finite non-negative number, got -1e-05.",
    ),
    "tolerance not a number": (
        BASE + "passes: [cleanup]\ntolerance: {rtol: tight}\n",
        "tolerance.rtol: expects a finite non-negative number, got 'tight'.",
    ),
    "tolerance not a mapping": (
        BASE + "passes: [cleanup]\ntolerance: 0.1\n",
        "tolerance: expects {rtol: float, atol: float}, got 0.1.",
    ),
    "unknown target": (
        BASE + "passes: [cleanup]\ntargets: [ort-cpu, ort-tpu]\n",
        "targets[1]: unknown target 'ort-tpu'. Known: ort-cpu, ort-cpu-int8, ort-gpu, ort-npu",
    ),
    "targets not a list of names": (
        BASE + "passes: [cleanup]\ntargets: ort-cpu\n",
        "targets: expects a list of target names, got 'ort-cpu'.",
    ),
    "not a mapping": (
        "- cleanup\n",
        "a recipe is a mapping with keys",
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(ERROR_CASES.values()), ids=list(ERROR_CASES))
def test_error_names_file_and_key_path(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path / "recipe.yaml", text)

    with pytest.raises(RecipeError) as error:
        load_recipe(path)

    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)


def test_bad_yaml_syntax(tmp_path: Path) -> None:
    path = _write(tmp_path / "recipe.yaml", BASE + "passes: [cleanup\n")

    with pytest.raises(RecipeError, match=re.escape(f"{path}: not valid YAML")):
        load_recipe(path)


def test_bad_yaml_syntax_says_where(tmp_path: Path) -> None:
    path = _write(tmp_path / "recipe.yaml", BASE + "passes: [cleanup\n")

    with pytest.raises(RecipeError, match=r"line \d+"):
        load_recipe(path)


def test_missing_file_gives_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(RecipeError, match=re.escape(f"{tmp_path.resolve() / 'nope.yaml'}: recipe "
                                                    "file does not exist")):
        load_recipe("nope.yaml")


def test_non_string_pass_name_is_a_recipe_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "recipe.yaml", BASE + "passes:\n  - 5: {a: 1}\n")

    with pytest.raises(RecipeError, match=re.escape("passes[0]")):
        load_recipe(path)


def test_nan_tolerance_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "recipe.yaml", BASE + "passes: [cleanup]\ntolerance: {rtol: .nan}\n")

    with pytest.raises(RecipeError, match=re.escape("tolerance.rtol")):
        load_recipe(path)


def test_quantize_step_with_calibration_relative_to_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx_ir as ir

    from edgeopt.core.runtime import run_model

    folder = tmp_path / "project"
    (folder / "calib").mkdir(parents=True)
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,3] y) <float[4,3] w = {1,2,3,4,5,6,7,8,9,10,11,12}> {
            y = MatMul(x, w)
        }
    """)
    onnx.save(model, folder / "m.onnx")
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(3)]
    for i, batch in enumerate(batches):
        np.savez(folder / "calib" / f"b{i}.npz", x=batch)
    (folder / "recipe.yaml").write_text(
        "model: m.onnx\noutput: out/q.onnx\npasses:\n  - quantize-static: {calibration: calib, method: mse}\n")
    monkeypatch.chdir(tmp_path)  # the working directory is not the recipe's folder
    result = run_recipe(load_recipe(folder / "recipe.yaml"))
    ops = [n.op_type for n in ir.load(result.output).graph]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = batches[0]  # inside the calibrated range (values outside it would clip)
    got = run_model(str(result.output), {"x": x})["y"]
    expected = x @ np.arange(1, 13, dtype=np.float32).reshape(4, 3)
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()  # a few int8 steps
