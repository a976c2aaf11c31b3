"""End-to-end test of ``edgeopt demo`` (export, clean-up, ORT artifact, measurements).

The demo takes several seconds, so it runs once per module: through the CLI
(``edgeopt demo --out DIR --json``, which calls ``edgeopt.cli.demo.run_demo``), and
every test reads what that one run wrote.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgeopt import cli
from edgeopt.cli import demo_model
from edgeopt.core.cpu import detect_host_cpu
from edgeopt.core.inspect_model import summarize
from edgeopt.core.model_io import load_model

ONNX_STAGES = ("exported", "cleaned up", "ort-cpu artifact")
INT8_STAGE = "int8 (static QDQ)"
SHARED_STAGE, DISTILLED_STAGE = "shared weights (4 values)", "shared + distilled"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out_dir = tmp_path_factory.mktemp("demo") / "edgeopt-demo"
    result = CliRunner().invoke(cli.app, ["demo", "--out", str(out_dir), "--json"])
    assert result.exit_code == 0, result.output
    return out_dir, json.loads(result.stdout)


def _rows(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["stage"]: row for row in payload["stages"]}


def test_demo_cli_json_matches_summary_json(demo_run: tuple[Path, dict[str, Any]]) -> None:
    out_dir, payload = demo_run

    summary = json.loads((out_dir / "summary.json").read_text())

    assert payload == summary
    assert payload["out_dir"] == str(out_dir.resolve())
    assert payload["export"]["max_abs"] < 1e-4  # the export check against torch
    assert [s["name"] for s in payload["passes"]][:2] == ["topological-sort", "infer-shapes"]


def test_demo_rows_and_accuracy(demo_run: tuple[Path, dict[str, Any]]) -> None:
    _, payload = demo_run
    rows = _rows(payload)

    assert set(rows) == {"pytorch (source)", *ONNX_STAGES, INT8_STAGE, SHARED_STAGE, DISTILLED_STAGE}
    reference = rows["pytorch (source)"]
    assert reference["accuracy"] >= 0.95
    assert reference["top1_agreement"] == 1.0 and math.isinf(reference["sqnr_db"])
    for stage in ONNX_STAGES:
        row = rows[stage]
        assert abs(row["accuracy"] - reference["accuracy"]) <= 0.01, row
        assert row["accuracy"] >= 0.95, row
        assert row["top1_agreement"] >= 0.99, row
        assert row["max_abs_diff"] < 1e-3, row
        assert row["latency_ms"] > 0, row
        assert Path(row["path"]).is_file(), row
        assert row["size_bytes"] >= Path(row["path"]).stat().st_size > 0, row


def test_demo_int8_artifact_is_smaller_and_agrees(demo_run: tuple[Path, dict[str, Any]]) -> None:
    _, payload = demo_run
    rows = _rows(payload)
    int8, fp32 = rows[INT8_STAGE], rows["cleaned up"]
    assert int8["size_bytes"] < fp32["size_bytes"]
    assert abs(int8["accuracy"] - rows["pytorch (source)"]["accuracy"]) <= 0.02, int8
    assert int8["top1_agreement"] >= 0.98, int8
    assert 20 < int8["sqnr_db"] < fp32["sqnr_db"], int8  # quantized, but far from noise
    assert Path(int8["path"]).is_file()


def test_demo_distillation_wins_back_what_weight_sharing_lost(demo_run: tuple[Path, dict[str, Any]]) -> None:
    _, payload = demo_run
    rows = _rows(payload)
    shared, distilled, fp32 = rows[SHARED_STAGE], rows[DISTILLED_STAGE], rows["cleaned up"]
    # 2-bit weights cost agreement with the source; training on unlabeled digits wins it back (held-out digits)
    assert shared["top1_agreement"] < 1.0, shared  # something to win back, or the next lines mean nothing
    assert distilled["top1_agreement"] > shared["top1_agreement"], (shared, distilled)
    # (no SQNR claim: KL on softened outputs leaves the logits free to shift, which softmax ignores)
    assert distilled["accuracy"] >= fp32["accuracy"] - 0.01, (distilled, fp32)
    assert distilled["size_bytes"] < fp32["size_bytes"] / 2, (distilled, fp32)  # still the codebook form
    model = load_model(distilled["path"])
    codebooks = [v.const_value.numpy() for v in model.graph.initializers.values()
                 if v.const_value is not None and v.const_value.dtype.is_floating_point()
                 and v.const_value.numpy().size == 4]
    assert codebooks, "no 4-value codebook left in the distilled model"


def test_demo_cleanup_removes_nodes(demo_run: tuple[Path, dict[str, Any]]) -> None:
    out_dir, payload = demo_run
    rows = _rows(payload)

    exported = summarize(load_model(out_dir / "digits_cnn.onnx"))
    cleaned = summarize(load_model(out_dir / "digits_cnn.optimized.onnx"))

    assert Path(rows["cleaned up"]["path"]) == out_dir / "digits_cnn.optimized.onnx"
    assert cleaned.nodes < exported.nodes
    assert (rows["exported"]["nodes"], rows["cleaned up"]["nodes"]) == (exported.nodes,
                                                                        cleaned.nodes)
    assert "BatchNormalization" in exported.ops  # so that the next line means something
    for op in ("BatchNormalization", "Identity", "Dropout"):
        assert op not in cleaned.ops
    assert cleaned.ops.get("Conv") == exported.ops.get("Conv") == 2


def test_demo_artifact_runs_like_cleaned_model(demo_run: tuple[Path, dict[str, Any]]) -> None:
    out_dir, payload = demo_run
    artifact = out_dir / "ort-cpu" / "model.onnx"

    assert artifact.is_file()
    assert Path(_rows(payload)["ort-cpu artifact"]["path"]) == artifact
    x = demo_model.load_data().x_val[:32]
    outputs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        for p in (artifact, out_dir / "digits_cnn.optimized.onnx", out_dir / "digits_cnn.onnx")
    ]
    assert outputs[0].shape == (32, 10)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    # Folding BatchNorm into Conv reorders float arithmetic: logits move by ~1e-5.
    np.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-4, atol=1e-4)


def test_demo_compiles_and_validates_every_target(demo_run: tuple[Path, dict[str, Any]]) -> None:
    """Every registered target (ONNX Runtime and TFLite, CPU/GPU/NPU) is emitted from the same
    cleaned-up model and calibration data and scored in its own runtime on the held-out digits."""
    from edgeopt.deploy.target_registry import list_targets

    out_dir, payload = demo_run
    compiled = payload["compiled"]
    assert [a["target"] for a in compiled["artifacts"]] == list_targets()
    assert all(a["error"] is None for a in compiled["artifacts"]), compiled["artifacts"]
    assert (out_dir / "compiled" / "manifest.json").is_file()
    assert {p.name for p in (out_dir / "compiled").glob("report.*")} == {"report.json", "report.md", "report.html"}
    validation = payload["validation"]
    reference = validation["reference_scores"]["metric_value"]
    assert validation["samples"] == len(demo_model.load_data().y_val)
    for row in validation["artifacts"]:
        scores = row["scores"]
        assert row["status"] == "ok", row
        assert abs(scores["metric_value"] - reference) <= 0.02, row  # accuracy on the labels
        assert scores["top1_agreement"] >= 0.98, row
        floor = 25 if row["precision"].startswith(("int8", "a8")) else 60  # dB vs the fp32 ONNX model
        assert scores["sqnr_db"] > floor, row
    rows = {row["target"]: row for row in validation["artifacts"]}
    # int8 on ONNX Runtime is right on whatever CPU runs it: within 1 dB of TFLite's full-integer
    # artifact (same model and calibration), and equal to its own reference path.
    assert abs(rows["ort-cpu-int8"]["scores"]["sqnr_db"] - rows["tflite-npu"]["scores"]["sqnr_db"]) < 1.0, rows
    for name, row in rows.items():
        check = row["kernel_check"]
        assert (check is None) is (row["precision"] in ("fp32", "fp16")), row
        if check is not None:
            assert not check["saturated"], (name, check)
    manifest = {a["target"]: a for a in compiled["artifacts"]}
    assert manifest["ort-cpu-int8"]["cpu"] == detect_host_cpu().family
