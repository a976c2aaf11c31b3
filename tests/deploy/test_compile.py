"""edgeopt compile: per-target artifacts and a manifest that matches the files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from edgeopt.cli import app, demo_model
from edgeopt.core.errors import ModelLoadError, PassOptionError, UnsupportedOpError
from edgeopt.core.runtime import run_model
from edgeopt.deploy.compile import compile_model, select_targets
from edgeopt.deploy.manifest import read_manifest
from edgeopt.deploy.target_registry import get_target, list_targets


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    data = demo_model.load_data()
    np.savez(folder / "calib.npz", image=data.x_train[:64])
    np.savez(folder / "val.npz", image=data.x_val[:40], label=data.y_val[:40].astype(np.int64))
    shutil.copy(demo_model.ONNX_MODEL, folder / "model.onnx")
    return folder


@pytest.fixture(scope="module")
def compiled(digits: Path) -> Path:
    out = digits / "out"
    compile_model(digits / "model.onnx", out, targets=["ort-cpu", "ort-cpu-int8"], calibration=digits / "calib.npz")
    return out


def test_manifest_matches_the_files(digits: Path, compiled: Path) -> None:
    raw = json.loads((compiled / "manifest.json").read_text())
    assert raw["source_sha256"] == hashlib.sha256((digits / "model.onnx").read_bytes()).hexdigest()
    assert raw["calibration"] == str((digits / "calib.npz").resolve())
    assert [a["target"] for a in raw["artifacts"]] == ["ort-cpu", "ort-cpu-int8"]
    for entry in raw["artifacts"]:
        file = compiled / entry["file"]
        assert entry["error"] is None and file.parent.name == entry["target"]
        assert entry["size_bytes"] == file.stat().st_size
        assert entry["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
        proto = onnx.load(str(file))
        onnx.checker.check_model(proto, full_check=True)
        assert [i["name"] for i in entry["inputs"]] == [i.name for i in proto.graph.input]
        assert [o["name"] for o in entry["outputs"]] == [o.name for o in proto.graph.output]
        assert entry["inputs"][0]["dtype"] == "float32" and entry["inputs"][0]["layout"] == "NCHW"
    int8 = onnx.load(str(compiled / raw["artifacts"][1]["file"]))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert read_manifest(compiled).artifacts[0].signature.inputs[0].onnx_name == demo_model.INPUT_NAME


def test_artifacts_compute_what_the_source_computes(digits: Path, compiled: Path) -> None:
    x = np.load(digits / "val.npz")["image"][:16]
    reference = run_model(str(digits / "model.onnx"), {"image": x})["logits"]
    for entry in read_manifest(compiled).artifacts:
        got = get_target(entry.target).run(compiled / str(entry.file), {"image": x})["logits"]
        if entry.precision == "fp32":
            np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)
        else:  # int8: same predictions on these samples, logits within a few quantization steps
            assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9
            assert np.abs(got - reference).max() < 0.1 * np.abs(reference).max()


def test_input_model_is_untouched_and_tampering_is_detected(digits: Path, compiled: Path, tmp_path: Path) -> None:
    assert hashlib.sha256((digits / "model.onnx").read_bytes()).hexdigest() == \
        read_manifest(compiled).source_sha256
    copy = tmp_path / "out"
    shutil.copytree(compiled, copy)
    artifact = copy / str(read_manifest(copy).artifacts[0].file)
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    with pytest.raises(ModelLoadError, match="does not match its sha256"):
        read_manifest(copy)


def test_a_failing_target_is_recorded_and_the_others_go_on(digits: Path, tmp_path: Path) -> None:
    result = compile_model(digits / "model.onnx", tmp_path, targets=["ort-cpu-int8", "ort-cpu"])
    failed, ok = result.manifest.artifacts
    assert failed.error == "CalibrationDataError" and failed.file is None and "calib" in str(failed.message).lower()
    assert ok.ok and (tmp_path / str(ok.file)).is_file()
    assert not (tmp_path / "ort-cpu-int8").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left



def test_a_target_that_fails_now_leaves_no_earlier_artifact(digits: Path, compiled: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out"
    shutil.copytree(compiled, copy)
    assert (copy / "ort-cpu-int8").is_dir()
    result = compile_model(digits / "model.onnx", copy, targets=["ort-cpu-int8"])  # no calibration this time
    assert result.manifest.artifacts[0].error == "CalibrationDataError"
    assert not (copy / "ort-cpu-int8").exists()  # the manifest says it failed; no stale model.onnx says otherwise


def test_validate_refuses_a_source_model_changed_since_compile(digits: Path, tmp_path: Path) -> None:
    from edgeopt.deploy.validation import validate

    shutil.copy(digits / "model.onnx", tmp_path / "model.onnx")
    compile_model(tmp_path / "model.onnx", tmp_path / "out", targets=["ort-cpu"])
    model = onnx.load(str(tmp_path / "model.onnx"))
    onnx.helper.set_model_props(model, {"edited": "after compile"})
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ModelLoadError, match="changed since edgeopt compile"):
        validate(tmp_path / "out", data=digits / "val.npz", reference=tmp_path / "model.onnx", limit=2)
    report = validate(tmp_path / "out", data=digits / "val.npz", reference=digits / "model.onnx", limit=2)
    assert report.artifacts[0].status == "ok"  # an explicit other reference is the user's choice

def test_unsupported_ops_are_listed_with_node_names(tmp_path: Path) -> None:
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17, "acme" : 1]>
        g (float[2] x) => (float[2] y) {
            a = acme.Mystery(x)
            b = Relu(a)
            y = acme.Puzzle(b)
        }""")
    model.graph.node[0].name, model.graph.node[2].name = "first_custom", "second_custom"
    onnx.save(model, tmp_path / "custom.onnx")
    with pytest.raises(UnsupportedOpError, match="'first_custom' .*'second_custom' "):  # before any target
        compile_model(tmp_path / "custom.onnx", tmp_path / "out", targets=["ort-cpu"], cleanup=False)
    assert not (tmp_path / "out").exists()


def test_select_targets_by_device_and_runtime() -> None:
    every = {name: get_target(name) for name in list_targets()}
    assert select_targets(["cpu"], ["ort"]) == [n for n, t in every.items()
                                               if t.device == "cpu" and t.runtime == "onnxruntime"]
    assert set(select_targets()) == set(every)
    assert select_targets(names=["ort-cpu"]) == ["ort-cpu"]
    with pytest.raises(PassOptionError, match="unknown device 'tpu'"):
        select_targets(["tpu"], ["ort"])
    with pytest.raises(PassOptionError, match="did you mean 'ort-cpu'"):
        select_targets(names=["ort-cpx"])


def test_cli_compile_exits_1_and_lists_failed_targets(digits: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", str(digits / "model.onnx"), "-o", str(tmp_path),
                                      "-t", "ort-cpu", "-t", "ort-cpu-int8", "--json"])
    assert result.exit_code == 1
    assert "ort-cpu-int8 (CalibrationDataError)" in result.stderr
    payload = json.loads(result.stdout)
    assert [a["error"] for a in payload["artifacts"]] == [None, "CalibrationDataError"]
    ok = CliRunner().invoke(app, ["compile", str(digits / "model.onnx"), "-o", str(tmp_path), "-t", "ort-cpu"])
    assert ok.exit_code == 0, ok.output
    assert "manifest.json" in ok.stdout


def test_recipe_compile_section(digits: Path, tmp_path: Path) -> None:
    from edgeopt.core.errors import RecipeError
    from edgeopt.workflow.optimize import run_recipe
    from edgeopt.workflow.recipe import load_recipe

    shutil.copy(digits / "model.onnx", tmp_path / "model.onnx")
    shutil.copy(digits / "calib.npz", tmp_path / "calib.npz")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: model.onnx\noutput: out/model.opt.onnx\npasses: [cleanup]\n"
                      "compile:\n  output: out/compiled\n  targets: [ort-cpu, ort-cpu-int8]\n"
                      "  calibration: calib.npz\n")
    result = run_recipe(load_recipe(recipe))
    manifest = read_manifest(tmp_path / "out" / "compiled")
    assert manifest.source == str(tmp_path / "out" / "model.opt.onnx")  # compiled from the optimized model
    assert manifest.calibration == str(tmp_path / "calib.npz")
    assert [a.target for a in manifest.artifacts if a.ok] == ["ort-cpu", "ort-cpu-int8"]
    assert result.artifacts["compile/ort-cpu"].is_file()
    recipe.write_text("model: model.onnx\noutput: out/m.onnx\npasses: [cleanup]\n"
                      "compile: {output: c, devices: [tpu]}\n")
    with pytest.raises(RecipeError, match="compile: unknown device 'tpu'"):
        load_recipe(recipe)
