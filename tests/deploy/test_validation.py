"""edgeopt validate: every artifact run in its runtime and scored, streaming, with reports."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgeopt.cli import app, demo_model
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.scoring import Scorer, load_custom_metric
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.report import write_report
from edgeopt.deploy.validation import validate

SAMPLES = 90


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    data = demo_model.load_data()
    np.savez(folder / "calib.npz", image=data.x_train[:64])
    np.savez(folder / "val.npz", image=data.x_val[:SAMPLES], label=data.y_val[:SAMPLES].astype(np.int64))
    np.save(folder / "labels.npy", data.y_val[:SAMPLES].astype(np.int64))
    shutil.copy(demo_model.ONNX_MODEL, folder / "model.onnx")
    compile_model(folder / "model.onnx", folder / "out", targets=["ort-cpu", "ort-cpu-int8", "ort-npu"],
                  calibration=folder / "calib.npz")
    return folder


def _torch_accuracy() -> float:
    """The shipped digits CNN's accuracy on the first SAMPLES held-out digits, computed by PyTorch."""
    data, module = demo_model.load_data(), demo_model.load_model().eval()
    with torch.no_grad():
        logits = module(torch.from_numpy(data.x_val[:SAMPLES])).numpy()
    return float((logits.argmax(1) == data.y_val[:SAMPLES]).mean())


@pytest.fixture(scope="module")
def report(digits: Path):  # noqa: ANN201 - a ValidationReport
    return validate(digits / "out", data=digits / "val.npz", reference=digits / "model.onnx", labels="label",
                    batch_size=8, warmup=1)


def test_validate_reproduces_the_known_accuracy(report) -> None:  # noqa: ANN001
    expected = _torch_accuracy()
    assert report.samples == SAMPLES
    assert report.reference_scores.metric_value == pytest.approx(expected, abs=1e-12)
    fp32 = report.artifacts[0]
    assert fp32.target == "ort-cpu" and fp32.status == "ok"
    assert fp32.scores.metric_value == pytest.approx(expected, abs=1e-12)
    assert fp32.scores.top1_agreement == 1.0 and fp32.scores.cosine > 0.999999 and fp32.scores.sqnr_db > 80
    for row in report.artifacts:
        assert row.status == "ok", row.message
        assert row.scores.samples == SAMPLES
        assert 0 < row.latency_p50_ms <= row.latency_p90_ms
        assert row.size_bytes == (Path(report.out_dir) / row.file).stat().st_size
    int8 = report.artifacts[1]
    assert int8.scores.sqnr_db < fp32.scores.sqnr_db  # quantization noise is measured, not hidden
    assert abs(int8.scores.metric_value - expected) <= 0.05


def test_static_batch_artifact_runs_one_row_per_call(report) -> None:  # noqa: ANN001
    npu = next(r for r in report.artifacts if r.target == "ort-npu")
    assert npu.calls == SAMPLES  # its input is fixed to batch 1; the data came in batches of 8
    assert report.artifacts[0].calls == math.ceil(SAMPLES / 8)


def test_labels_file_and_batch_size_give_the_same_scores(digits: Path, report) -> None:  # noqa: ANN001
    again = validate(digits / "out", data=digits / "val.npz", reference=digits / "model.onnx",
                     labels=str(digits / "labels.npy"), batch_size=7, warmup=0, targets=("ort-cpu",))
    assert [r.target for r in again.artifacts] == ["ort-cpu"]
    first = report.artifacts[0].scores
    assert again.artifacts[0].scores.metric_value == first.metric_value
    assert again.artifacts[0].scores.top1_agreement == first.top1_agreement
    with pytest.raises(CalibrationDataError, match="no array 'answer'"):
        validate(digits / "out", data=digits / "val.npz", reference=digits / "model.onnx", labels="answer")


def test_labels_that_do_not_line_up_with_the_inputs_are_refused(digits: Path, tmp_path: Path) -> None:
    with np.load(digits / "val.npz") as val:
        np.savez(tmp_path / "short.npz", image=val["image"][:10], label=val["label"][:9])
    with pytest.raises(CalibrationDataError, match="9,\\) labels for inputs of \\[10\\] rows"):
        validate(digits / "out", data=tmp_path / "short.npz", reference=digits / "model.onnx", labels="label",
                 targets=("ort-cpu",))


def test_scorer_streams_what_a_single_pass_computes() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 10))
    got = ref + 0.3 * rng.standard_normal((50, 10))
    labels = rng.integers(0, 10, 50)
    scorer = Scorer("top5")
    for start in range(0, 50, 13):
        scorer.update({"y": ref[start:start + 13]}, {"y": got[start:start + 13]}, labels[start:start + 13])
    scores = scorer.result()
    top5 = np.argsort(-got, axis=1)[:, :5]
    assert scores.metric_value == pytest.approx((top5 == labels[:, None]).any(1).mean())
    assert scores.top1_agreement == pytest.approx((got.argmax(1) == ref.argmax(1)).mean())
    cosines = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert scores.cosine == pytest.approx(cosines.mean())
    assert scores.sqnr_db == pytest.approx(10 * np.log10((ref**2).sum() / ((ref - got) ** 2).sum()))
    assert scores.max_abs == pytest.approx(np.abs(ref - got).max())
    with pytest.raises(PassOptionError, match="unknown metric 'top3'"):
        Scorer("top3")



def test_scorer_reports_a_nan_output_instead_of_hiding_it() -> None:
    scorer = Scorer("cosine")
    ref = np.ones((2, 3), np.float32)
    scorer.update({"y": ref}, {"y": np.array([[1, np.nan, 1], [1, 1, 1]], np.float32)}, None)
    scorer.update({"y": ref}, {"y": ref + 0.5}, None)  # a later finite batch must not replace the NaN
    assert math.isnan(scorer.result().max_abs)

def test_per_layer_comparison_names_reference_nodes(digits: Path) -> None:
    result = validate(digits / "out", data=digits / "val.npz", reference=digits / "model.onnx", limit=16,
                      batch_size=16, warmup=0, per_layer="always", targets=("ort-cpu-int8",))
    (row,) = result.artifacts
    assert row.per_layer, row.notes
    nodes = {n.name for n in onnx.load(str(digits / "model.onnx")).graph.node}
    assert {layer["node"] for layer in row.per_layer} <= nodes
    introduced = [layer["introduced_db"] for layer in row.per_layer]
    assert introduced == sorted(introduced, reverse=True)


def test_custom_metric(digits: Path, tmp_path: Path) -> None:
    (tmp_path / "metric.py").write_text(
        "import numpy as np\n"
        "def margin(outputs, labels):\n"
        "    top2 = np.sort(outputs['logits'], axis=1)[:, -2:]\n"
        "    return top2[:, 1] - top2[:, 0]\n")
    metric = load_custom_metric(f"{tmp_path / 'metric.py'}:margin")
    result = validate(digits / "out", data=digits / "val.npz", reference=digits / "model.onnx", metric="custom",
                      custom=metric, batch_size=30, warmup=0, targets=("ort-cpu",))
    x = np.load(digits / "val.npz")["image"]
    from edgeopt.core.runtime import run_model

    logits = np.sort(run_model(str(digits / "model.onnx"), {"image": x})["logits"], axis=1)
    assert result.artifacts[0].scores.metric_value == pytest.approx((logits[:, -1] - logits[:, -2]).mean(), rel=1e-4)
    with pytest.raises(PassOptionError, match="has no function 'nope'"):
        load_custom_metric(f"{tmp_path / 'metric.py'}:nope")


def test_reports_are_written(report, tmp_path: Path) -> None:  # noqa: ANN001
    written = write_report(report, tmp_path)
    loaded = json.loads(written["json"].read_text())
    assert [a["target"] for a in loaded["artifacts"]] == [a.target for a in report.artifacts]
    md = written["md"].read_text()
    assert all(f"| {a.target} |" in md for a in report.artifacts)
    page = written["html"].read_text()
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_validate(digits: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(digits / "out"), "--data", str(digits / "val.npz"),
                                      "--labels", "label", "--limit", "20", "--batch-size", "10",
                                      "--report-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["samples"] == 20
    assert payload["reference"] == str((digits / "model.onnx").resolve())  # the manifest's source by default
    assert (tmp_path / "report.html").is_file()
    bad = CliRunner().invoke(app, ["validate", str(digits / "out")])
    assert isinstance(bad.exception, PassOptionError) and "needs --data" in str(bad.exception)


def test_tflite_int8_per_layer_comparison(digits: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    from edgeopt.deploy.target_registry import list_targets

    if not {"tflite-cpu", "tflite-npu"} <= set(list_targets()):
        pytest.skip("the TFLite targets are not registered")
    calib = digits / "calib-batch1"  # one sample per file: the NPU artifact's batch is fixed to 1
    calib.mkdir(exist_ok=True)
    for i, row in enumerate(np.load(digits / "calib.npz")["image"][:32]):
        np.savez(calib / f"{i:03d}.npz", image=row[None])
    compile_model(digits / "model.onnx", digits / "tflite", targets=["tflite-cpu", "tflite-npu"], calibration=calib)
    result = validate(digits / "tflite", data=digits / "val.npz", reference=digits / "model.onnx", limit=32,
                      warmup=0, per_layer="always")  # the per-layer pass also reads 32 samples
    fp32, int8 = result.artifacts
    assert fp32.per_layer is None  # float artifacts are not compared layer by layer
    assert fp32.kernel_check is None
    assert int8.kernel_check is not None and int8.kernel_check.reference == "LiteRT reference kernels"
    assert not int8.kernel_check.saturated, int8.kernel_check  # LiteRT's int8 accumulates in int32
    assert int8.status == "ok" and int8.per_layer, int8.notes
    assert "per-layer comparison against tflite-cpu (same conversion)" in int8.notes
    layers = int8.per_layer
    assert len({row["tensor"] for row in layers}) == len(layers)  # one row per op output
    assert all(row["op"] != "DELEGATE" and row["sqnr_db"] > 10 for row in layers)
    assert [row["introduced_db"] for row in layers] == sorted((row["introduced_db"] for row in layers), reverse=True)
    # on the same samples, the int8 output vs float TFLite is what validate measured vs fp32 ONNX (tflite-cpu
    # itself is ~130 dB from it), so the layer table ends where the validation table starts
    output_rows = [row for row in layers if row["tensor"].startswith("PartitionedCall")]
    assert output_rows and abs(output_rows[0]["sqnr_db"] - int8.scores.sqnr_db) < 0.5
