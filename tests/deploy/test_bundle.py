"""Device bundles: self-contained, runnable with numpy + the runtime, scored exactly like the host run."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeopt.cli import app, demo_model
from edgeopt.core.errors import ModelLoadError
from edgeopt.deploy.bundle import read_bundle, run_on_device, score_bundle, write_bundle
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.devices import parse_device
from edgeopt.deploy.target_registry import list_targets

SAMPLES = 24


def _targets() -> list[str]:
    names = ["ort-cpu", "ort-cpu-int8", "ort-npu"]
    try:  # the LiteRT path of the runner, where the TFLite target and its interpreter are installed
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return names
    return names + [n for n in ("tflite-cpu",) if n in list_targets()]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bundle")
    data = demo_model.load_data()
    np.savez(folder / "calib.npz", image=data.x_train[:64])
    np.savez(folder / "val.npz", image=data.x_val[:SAMPLES], label=data.y_val[:SAMPLES].astype(np.int64))
    shutil.copy(demo_model.ONNX_MODEL, folder / "model.onnx")
    compile_model(folder / "model.onnx", folder / "out", targets=_targets(), calibration=folder / "calib.npz")
    write_bundle(folder / "out", folder / "bundle", data=folder / "val.npz", reference=folder / "model.onnx",
                 labels="label", batch_size=4, warmup=1)
    return folder / "out", folder / "bundle"


def test_bundle_is_self_contained_and_reproduces_the_host_outputs(bundled: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    _, bundle = bundled
    moved = tmp_path / "elsewhere"
    shutil.copytree(bundle, moved)  # nothing in it may point back at the compile folder
    done = subprocess.run([sys.executable, "-I", "run_bundle.py", ".", "--out", "outputs"], cwd=moved,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    spec = read_bundle(moved)
    assert [a["target"] for a in spec["artifacts"]] == _targets()
    for entry in spec["artifacts"]:
        assert (moved / entry["file"]).is_file()
        timings = json.loads((moved / "outputs" / entry["target"] / "timings.json").read_text())
        assert len(timings["seconds"]) == len(entry["runs"])
        for index, run in enumerate(entry["runs"]):
            for k, expected in enumerate(run["expected"]):
                got = np.load(moved / "outputs" / entry["target"] / f"{index:06d}_{k}.npy")
                np.testing.assert_array_equal(got, np.load(moved / expected))


def test_bundle_run_scores_equal_the_in_process_run(bundled: tuple[Path, Path]) -> None:
    _, bundle = bundled
    report = run_on_device(bundle, parse_device("local"))
    host = json.loads((bundle / "host_report.json").read_text())
    assert report.where == "local" and report.samples == SAMPLES
    assert asdict(report.reference_scores) == host["reference_scores"]
    for row, host_row in zip(report.artifacts, host["artifacts"], strict=True):
        assert row.status == "ok" and row.matches_host, row.message
        assert asdict(row.scores) == host_row["scores"]
        assert row.latency_p50_ms is not None and row.calls == host_row["calls"]


def test_missing_outputs_are_a_run_failure(bundled: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = bundled
    subprocess.run([sys.executable, str(bundle / "run_bundle.py"), str(bundle), "--out", str(tmp_path),
                    "--only", "ort-cpu"], check=True, capture_output=True, timeout=300)
    report = score_bundle(bundle, tmp_path, where="test")
    statuses = {r.target: r.status for r in report.artifacts}
    assert statuses.pop("ort-cpu") == "ok"
    assert set(statuses.values()) == {"run-failed"}


def test_runner_needs_only_numpy_and_the_runtimes() -> None:
    import edgeopt.deploy.bundle_runner as runner

    tree = ast.parse(Path(runner.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {str(node.module).split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    third_party = imported - set(sys.stdlib_module_names)
    assert third_party == {"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime"}


def test_cli_bundle_then_validate_on_local_device(bundled: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = bundled
    data = out.parent / "val.npz"
    made = CliRunner().invoke(app, ["bundle", str(out), "-o", str(tmp_path / "b"), "--data", str(data),
                                    "--labels", "label", "--limit", "8", "-t", "ort-cpu"])
    assert made.exit_code == 0, made.output
    ran = CliRunner().invoke(app, ["validate", str(tmp_path / "b"), "--device", "local", "--json",
                                   "--report-dir", str(tmp_path / "r")])
    assert ran.exit_code == 0, ran.output
    payload = json.loads(ran.stdout)
    assert [(a["target"], a["matches_host"]) for a in payload["artifacts"]] == [("ort-cpu", True)]
    assert (tmp_path / "r" / "report.md").is_file()
    subprocess.run([sys.executable, "run_bundle.py", ".", "--out", str(tmp_path / "brought")], cwd=tmp_path / "b",
                   check=True, capture_output=True, timeout=300)  # as on a device, by hand
    scored = CliRunner().invoke(app, ["validate", str(tmp_path / "b"), "--results", str(tmp_path / "brought"),
                                      "--json", "--report-dir", str(tmp_path / "r")])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["artifacts"][0]["scores"] == payload["artifacts"][0]["scores"]
    with pytest.raises(ModelLoadError, match="not a bundle"):
        read_bundle(tmp_path)


def test_a_broken_bundle_or_results_folder_is_a_one_line_error(bundled: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = bundled
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    results = tmp_path / "results"
    subprocess.run([sys.executable, str(copy / "run_bundle.py"), str(copy), "--out", str(results), "--only",
                    "ort-cpu"], check=True, capture_output=True, timeout=300)
    (results / "ort-cpu" / "000001_0.npy").unlink()  # a device that stopped half-way through copying
    with pytest.raises(ModelLoadError, match=r"cannot score the outputs .*FileNotFoundError") as caught:
        score_bundle(copy, results, where="test")
    assert "\n" not in str(caught.value)
    (copy / "host_report.json").unlink()
    with pytest.raises(ModelLoadError, match="host_report.json"):
        score_bundle(copy, results, where="test")
    (copy / "bundle.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not a readable bundle"):
        read_bundle(copy)


def test_a_damaged_artifact_is_refused_on_the_device(bundled: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = bundled
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    entry = read_bundle(copy)["artifacts"][0]
    artifact = copy / entry["file"]
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\0")  # one byte flipped on the way
    done = subprocess.run([sys.executable, "run_bundle.py", ".", "--out", "outputs"], cwd=copy,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # the other artifacts still ran
    expected = (f"{entry['target']}: ValueError: {artifact.relative_to(copy)}: sha256 differs from bundle.json "
                "(damaged in transfer?). Copy the bundle again.")
    assert [line for line in done.stderr.splitlines() if "sha256" in line] == [expected]
    report = score_bundle(copy, copy / "outputs", where="test")
    rows = {r.target: r for r in report.artifacts}
    assert rows[entry["target"]].status == "run-failed" and rows[entry["target"]].error == "ValueError"
    assert "sha256 differs" in str(rows[entry["target"]].message)
    assert all(r.status == "ok" and r.matches_host for name, r in rows.items() if name != entry["target"])


def test_an_unwritable_bundle_or_compile_folder_is_a_one_line_error(bundled: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    from edgeopt.core.errors import ModelSaveError

    out, _ = bundled
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ModelSaveError, match="cannot create the bundle folder"):
        write_bundle(out, tmp_path / "file" / "bundle", data=out.parent / "val.npz",
                     reference=out.parent / "model.onnx")
    with pytest.raises(ModelSaveError, match="cannot create the output folder"):  # /proc: exists, takes no files
        compile_model(out.parent / "model.onnx", "/proc", targets=["ort-cpu"])
