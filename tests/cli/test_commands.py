"""Tests for the ``edgeopt`` command line.

A few key cases run the installed console script in a subprocess (exit codes,
one-line errors, tracebacks only with ``--debug``); the rest call ``main()`` or
``typer.testing.CliRunner`` in-process, which is much faster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgeopt import cli
from edgeopt.cli import console
from edgeopt.core.errors import ModelLoadError
from edgeopt.pipeline import registry

EDGEOPT = Path(sys.executable).parent / "edgeopt"
PASS_NAMES = [info.name for info in registry.list_passes()]
CLEANUP = list(registry.list_presets()["cleanup"])

# Conv(3 -> 4, 3x3, no padding) on 8x8 -> Identity -> Relu -> Reshape(-1, 144) -> Gemm(144 -> 10).
CONV_GEMM_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
net (float[N, 3, 8, 8] x) => (float[N, 10] y)
{
    c = Conv<kernel_shape = [3, 3]>(x, W, B)
    i = Identity(c)
    r = Relu(i)
    shape = Constant<value = int64[2] {-1, 144}>()
    f = Reshape(r, shape)
    y = Gemm<transB = 1>(f, G)
}
"""
# MACs at batch 1, by hand: Conv has 4*6*6 = 144 outputs, each 3*3*3 = 27 MACs -> 3888;
# Gemm has 10 outputs, each a dot product of length 144 -> 1440. Total 5328.
CONV_GEMM_MACS = 144 * 27 + 10 * 144
# W 4*3*3*3 = 108, B 4, G 10*144 = 1440, the Reshape shape constant 2.
CONV_GEMM_PARAMETERS = 108 + 4 + 1440 + 2


def _conv_gemm_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(CONV_GEMM_TEXT)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W"),
        onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
        onnx.numpy_helper.from_array(rng.standard_normal((10, 144)).astype(np.float32), "G"),
    ])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}


def _assert_same_outputs(before: Path, after: Path) -> None:
    feeds = _feeds()
    for got, want in zip(_ort(after, feeds), _ort(before, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _conv_gemm_model(tmp_path / "model.onnx")


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A CliRunner whose rich consoles are wide enough that no cell wraps."""
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    return CliRunner()


def _main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run the real entry point ``edgeopt.cli.main`` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def _script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``edgeopt`` console script."""
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    return subprocess.run([str(EDGEOPT), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120, check=False)


# --- inspect -----------------------------------------------------------------------------


def test_inspect_json_from_console_script(model: Path) -> None:
    proc = _script("inspect", str(model), "--json")

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["path"] == str(model.resolve())
    assert summary["file_bytes"] == model.stat().st_size
    assert summary["opsets"] == {"ai.onnx": 17}
    assert summary["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 3, 8, 8]}]
    assert summary["outputs"] == [{"name": "y", "dtype": "float", "shape": ["N", 10]}]
    assert summary["ops"] == {"Conv": 1, "Identity": 1, "Relu": 1, "Constant": 1,
                              "Reshape": 1, "Gemm": 1}
    assert summary["nodes"] == 6
    assert summary["parameters"] == CONV_GEMM_PARAMETERS
    assert summary["weight_bytes"] == {"float": (108 + 4 + 1440) * 4, "int64": 2 * 8}
    assert summary["macs"] == CONV_GEMM_MACS == 5328
    assert summary["macs_unknown"] == []


def test_inspect_table(runner: CliRunner, model: Path) -> None:
    result = runner.invoke(cli.app, ["inspect", str(model)])

    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "ai.onnx 17" in text
    assert "x: float['N', 3, 8, 8]" in text
    assert f"{CONV_GEMM_MACS:,}" in text  # "5,328"
    assert f"{CONV_GEMM_PARAMETERS:,}" in text
    for op in ("Conv", "Identity", "Relu", "Constant", "Reshape", "Gemm"):
        assert op in text
    assert "{" not in text  # a table, not JSON


# --- optimize ----------------------------------------------------------------------------


def test_optimize_cleanup_verify_writes_equivalent_model(
    runner: CliRunner, model: Path, tmp_path: Path
) -> None:
    original = model.read_bytes()
    out = tmp_path / "out" / "model.opt.onnx"

    result = runner.invoke(cli.app, ["optimize", str(model), "-o", str(out),
                                     "--passes", "cleanup", "--verify"])

    assert result.exit_code == 0, result.output
    assert model.read_bytes() == original
    assert f"wrote {out}" in result.stdout
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert "Identity" in _ops(model) and "Identity" not in _ops(out)
    _assert_same_outputs(model, out)


def test_optimize_json_output_parses(runner: CliRunner, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "opt.onnx"

    result = runner.invoke(cli.app, ["optimize", str(model), "-o", str(out), "--json"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["output"] == str(out)
    assert payload["before"]["nodes"] == 6 and payload["after"]["nodes"] == 4
    assert payload["after"]["ops"].get("Identity") is None
    assert payload["after"]["ops"].get("Constant") is None  # the Reshape's shape is an initializer
    names = [s["name"] for s in payload["steps"]]
    # the preset repeats until a round changes nothing: the last round is all unchanged
    assert names[: len(CLEANUP)] == CLEANUP and len(names) % len(CLEANUP) == 0
    assert not any(s["modified"] for s in payload["steps"][-len(CLEANUP):])
    assert payload["artifacts"] == {}


def test_optimize_refuses_to_overwrite_input(model: Path) -> None:
    original = model.read_bytes()

    proc = _script("optimize", str(model), "-o", str(model))

    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "refusing to overwrite" in lines[0] and str(model.resolve()) in lines[0]
    assert "Traceback" not in proc.stderr
    assert model.read_bytes() == original


def test_optimize_in_place_overwrites_input(runner: CliRunner, model: Path, tmp_path: Path) -> None:
    reference = _conv_gemm_model(tmp_path / "reference.onnx")

    result = runner.invoke(cli.app, ["optimize", str(model), "-o", str(model), "--in-place"])

    assert result.exit_code == 0, result.output
    assert model.read_bytes() != reference.read_bytes()
    assert "Identity" not in _ops(model)
    _assert_same_outputs(reference, model)


def test_optimize_target_writes_artifact_beside_output(
    runner: CliRunner, model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "build" / "model.onnx"

    result = runner.invoke(cli.app, ["optimize", str(model), "-o", str(out), "--target", "ort-cpu"])

    assert result.exit_code == 0, result.output
    artifact = tmp_path / "build" / "ort-cpu" / "model.onnx"
    assert artifact.is_file()
    assert f"wrote ort-cpu artifact {artifact}" in result.stdout
    onnx.checker.check_model(onnx.load(artifact), full_check=True)
    _assert_same_outputs(model, artifact)


def test_option_of_wrong_type_names_pass_option_and_type(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out.onnx"

    code, _, err = _main(monkeypatch, capsys, "optimize", str(model), "-o", str(out),
                         "--passes", "fold-constants", "-O", "fold-constants.input_size_limit=abc")

    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "'fold-constants'" in err and "'input_size_limit'" in err
    assert "expects int" in err and "'abc'" in err
    assert not out.exists()


def test_unknown_pass_suggests_close_match(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model: Path,
    tmp_path: Path,
) -> None:
    code, _, err = _main(monkeypatch, capsys, "optimize", str(model), "-o",
                         str(tmp_path / "out.onnx"), "--passes", "cleanup,fold-constant")

    assert code == 1
    assert "unknown pass 'fold-constant'" in err
    assert "did you mean 'fold-constants'" in err
    assert not (tmp_path / "out.onnx").exists()


# --- errors ------------------------------------------------------------------------------


def test_missing_file_gives_absolute_path_and_no_traceback(tmp_path: Path) -> None:
    proc = _script("inspect", "missing.onnx", cwd=tmp_path)

    assert proc.returncode == 1
    assert str((tmp_path / "missing.onnx").resolve()) in proc.stderr
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback(tmp_path: Path) -> None:
    proc = _script("--debug", "inspect", "missing.onnx", cwd=tmp_path)

    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ModelLoadError" in proc.stderr


def test_debug_reraises_in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "argv", ["edgeopt", "--debug", "inspect", str(tmp_path / "no.onnx")])
    with pytest.raises(ModelLoadError, match="does not exist"):
        cli.main()


def test_corrupt_file_is_not_a_valid_onnx_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01")

    code, out, err = _main(monkeypatch, capsys, "inspect", str(corrupt))

    assert code == 1
    assert "not a valid ONNX model" in err and str(corrupt) in err
    assert "Traceback" not in err
    assert out == ""


def test_unknown_subcommand_is_usage_error() -> None:
    proc = _script("frobnicate")

    assert proc.returncode == 2
    assert "No such command 'frobnicate'" in proc.stderr


# --- list-passes, check, convert-opset, run ----------------------------------------------


def test_list_passes_json(runner: CliRunner) -> None:
    result = runner.invoke(cli.app, ["list-passes", "--json"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    names = [p["name"] for p in payload["passes"]]
    assert names == sorted(PASS_NAMES)
    assert {"fold-constants", "eliminate-identity", "fold-batchnorm", "convert-opset"} <= set(names)
    assert payload["presets"]["cleanup"] == CLEANUP
    assert set(payload["presets"]["cleanup"]) <= set(names)
    fold = next(p for p in payload["passes"] if p["name"] == "fold-constants")
    assert fold["options"]["input_size_limit"] == {"type": "int", "default": 262144}
    assert all(p["summary"] for p in payload["passes"])


def test_list_passes_table(runner: CliRunner) -> None:
    result = runner.invoke(cli.app, ["list-passes"])

    assert result.exit_code == 0, result.output
    for name in PASS_NAMES:
        assert name in result.stdout
    assert "input_size_limit: int = 262144" in result.stdout


CUSTOM_DOMAIN_TEXT = """
<ir_version: 10, opset_import: ["" : 17, "my.domain" : 1]>
custom (float[2, 3] x) => (float[2, 3] y)
{
    a = Relu(x)
    y = my.domain.Foo(a)
}
"""


def test_check_reports_unknown_domain_node(runner: CliRunner, tmp_path: Path) -> None:
    model = onnx.parser.parse_model(CUSTOM_DOMAIN_TEXT)
    model.graph.node[1].name = "the_foo_node"
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)

    table = runner.invoke(cli.app, ["check", str(path), "--target", "ort-cpu"])
    as_json = runner.invoke(cli.app, ["check", str(path), "--target", "ort-cpu", "--json"])

    assert table.exit_code == 1
    assert "the_foo_node" in table.stdout and "my.domain::Foo" in table.stdout
    assert as_json.exit_code == 1
    issues = json.loads(as_json.stdout)
    assert [(i["node"], i["op"]) for i in issues] == [("the_foo_node", "my.domain::Foo")]
    assert "my.domain" in issues[0]["message"]


def test_check_clean_model_exits_zero(runner: CliRunner, model: Path) -> None:
    result = runner.invoke(cli.app, ["check", str(model), "--target", "ort-cpu"])

    assert result.exit_code == 0, result.output
    assert "every node runs on ort-cpu" in result.stdout


OPSET11_TEXT = """
<ir_version: 6, opset_import: ["" : 11]>
old (float[2, 3, 4] x) => (float[2, 4] y)
{
    s = ReduceSum<axes = [1], keepdims = 1>(x)
    y = Squeeze<axes = [1]>(s)
}
"""


def test_convert_opset_11_to_17(runner: CliRunner, tmp_path: Path) -> None:
    source = tmp_path / "old.onnx"
    onnx.save(onnx.parser.parse_model(OPSET11_TEXT), source)
    out = tmp_path / "new.onnx"

    result = runner.invoke(cli.app, ["convert-opset", str(source), "-o", str(out), "--to", "17"])

    assert result.exit_code == 0, result.output
    assert "(opset 17)" in result.stdout
    converted = onnx.load(out)
    onnx.checker.check_model(converted, full_check=True)
    assert {o.domain: o.version for o in converted.opset_import}[""] == 17
    # From opset 13, ReduceSum and Squeeze take their axes as an input, not an attribute.
    for node in converted.graph.node:
        assert not any(a.name == "axes" for a in node.attribute), node
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    (got,), (want,) = _ort(out, feeds), _ort(source, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, feeds["x"].sum(axis=1), rtol=1e-5, atol=1e-6)


def test_run_recipe_end_to_end(runner: CliRunner, model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: model.onnx\n"
        "output: build/model.opt.onnx\n"
        "passes:\n"
        "  - cleanup\n"
        "  - fold-constants:\n"
        "      input_size_limit: 4096\n"
        "verify: true\n"
        "tolerance: {rtol: 1e-4, atol: 1.0e-5}\n"
        "targets: [ort-cpu]\n"
    )

    result = runner.invoke(cli.app, ["run", str(recipe)])

    assert result.exit_code == 0, result.output
    out = tmp_path / "build" / "model.opt.onnx"
    artifact = tmp_path / "build" / "ort-cpu" / "model.onnx"
    assert out.is_file() and artifact.is_file()
    assert f"wrote ort-cpu artifact {artifact}" in result.stdout
    assert "Identity" not in _ops(out)
    _assert_same_outputs(model, out)
    _assert_same_outputs(model, artifact)


def test_run_recipe_json(runner: CliRunner, model: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: model.onnx\noutput: out.onnx\npasses: [eliminate-identity]\n")

    result = runner.invoke(cli.app, ["run", str(recipe), "--json"])

    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["output"] == str(tmp_path / "out.onnx")
    assert [s["name"] for s in payload["steps"]] == ["eliminate-identity"]
    assert payload["steps"][0]["modified"] is True
    assert (payload["before"]["nodes"], payload["after"]["nodes"]) == (6, 5)


def test_run_recipe_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: m.onnx\noutput: o.onnx\npases: [cleanup]\n")

    code, _, err = _main(monkeypatch, capsys, "run", str(recipe))

    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert str(recipe) in err and "did you mean 'passes'" in err


def test_option_for_a_pass_inside_a_preset(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    onnx.save(onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,3] y) { i = Identity(x)  y = Relu(i) }
    """), source)
    result = CliRunner().invoke(
        cli.app, ["optimize", str(source), "-o", str(tmp_path / "o.onnx"), "--passes", "cleanup",
              "-O", "fold-constants.input_size_limit=abc", "--json"])
    assert result.exit_code == 1
    assert "option 'input_size_limit' expects int, got 'abc'" in str(result.exception)
    result = CliRunner().invoke(
        cli.app, ["optimize", str(source), "-o", str(tmp_path / "o.onnx"), "--passes", "cleanup",
              "-O", "fold-constants.input_size_limit=16", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["after"]["ops"] == {"Relu": 1}
