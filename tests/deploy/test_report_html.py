"""The validation report page: self-contained, rendered by a real headless Chromium, labels apart."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeopt.cli import demo_model
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.report import write_report
from edgeopt.deploy.report_html import Box, place_labels
from edgeopt.deploy.validation import ValidationReport, validate
from edgeopt.testing import browser


def check_rendered(page: Path, tmp_path: Path, *, scatters: int) -> str:
    """Render ``page`` in Chromium; check it is offline, draws ``scatters`` charts with labels apart and a
    non-blank screenshot; return the DOM."""
    shown = browser.render_report(page, tmp_path)
    assert not shown.online, "the page loads something online"
    assert shown.dom.count('class="chart scatter"') == scatters
    assert shown.labels >= 2 and shown.overlaps == 0
    from PIL import Image

    image = np.asarray(Image.open(shown.screenshot).convert("RGB"))
    assert image.shape == (2000, 1280, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # drawn, not a blank or error page
    return shown.dom


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ValidationReport:
    folder = tmp_path_factory.mktemp("digits")
    data = demo_model.load_data()
    np.savez(folder / "calib.npz", image=data.x_train[:64])
    np.savez(folder / "val.npz", image=data.x_val[:40], label=data.y_val[:40].astype(np.int64))
    shutil.copy(demo_model.ONNX_MODEL, folder / "model.onnx")
    compile_model(folder / "model.onnx", folder / "out", targets=["ort-cpu", "ort-cpu-int8", "ort-npu"],
                  calibration=folder / "calib.npz")
    return validate(folder / "out", data=folder / "val.npz", reference=folder / "model.onnx", labels="label",
                    batch_size=20, warmup=0, per_layer="always")


def test_labels_of_a_crowded_chart_overlap_nothing() -> None:
    rng = random.Random(0)
    anchors = [(300 + rng.uniform(-25, 25), 180 + rng.uniform(-25, 25)) for _ in range(12)]
    anchors += [(rng.uniform(70, 540), rng.uniform(10, 330)) for _ in range(20)]
    labels = [f"#{i} {'winner' if i == 3 else ''}".strip() for i in range(len(anchors))]
    boxes = place_labels(anchors, labels, Box(66, 0, 494, 314))
    dots = [Box(x - 4, y - 4, 8, 8) for x, y in anchors]
    for i, box in enumerate(boxes):
        assert 66 <= box.x and box.x + box.w <= 560 and 0 <= box.y and box.y + box.h <= 314
        assert not any(box.overlaps(other, 0) for other in boxes[i + 1:]), labels[i]
        assert not any(box.overlaps(dot, 0) for dot in dots), labels[i]


def test_a_label_keeps_off_the_points_that_have_none() -> None:
    """The search's chart labels the front and the winner only: a dominated trial's dot, unlabelled, sat
    right of a label's anchor, where the label went first."""
    import re

    from edgeopt.deploy.report_html import Point, scatter

    points = [Point(0.0, 0.0, label="#2 winner", strong=True), Point(0.15, 0.0), Point(1.0, 1.0, label="#0")]
    svg = scatter(points, x_label="latency", y_label="accuracy")
    circles = [(float(x), float(y)) for x, y in re.findall(r"<circle cx='([\d.]+)' cy='([\d.]+)'", svg)]
    label = re.search(r"<text class='label' x='([\d.]+)' y='([\d.]+)'[^>]*>#2 winner<", svg)
    assert label is not None and len(circles) == 3
    x, y = float(label.group(1)), float(label.group(2))
    box = Box(x - 1, y - 11, 7 * len("#2 winner") + 2, 14)  # the label's box, generous
    unlabelled = circles[1]
    assert not box.overlaps(Box(unlabelled[0] - 4, unlabelled[1] - 4, 8, 8), 0), (label.groups(), unlabelled)


def test_the_validation_page_renders_in_chromium(report: ValidationReport, tmp_path: Path) -> None:
    if browser.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    written = write_report(report, tmp_path)
    assert written["png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    dom = check_rendered(written["html"], tmp_path, scatters=2)
    quantized = [a for a in report.artifacts if a.per_layer]
    assert quantized, "per-layer rows were asked for"
    bars = dom.count('class="chart bars"')
    assert bars == 2 + len(quantized)  # size and latency per target, one SQNR chart per quantized artifact
    assert dom.count('class="bar"') == 2 * len(report.artifacts) + sum(len(a.per_layer or []) for a in quantized)
    shown = browser.table_rows(dom, "artifacts")
    assert [r[0] for r in shown] == [a.target for a in report.artifacts]
    sorted_dom = browser.dump_dom(written["html"], "sort=-size KiB")  # sorted by the page's own script
    by_size = browser.table_rows(sorted_dom, "artifacts")
    largest = sorted(report.artifacts, key=lambda a: -(a.size_bytes or 0))
    assert [r[0] for r in by_size] == [a.target for a in largest]
    assert [r[0] for r in by_size] != [a.target for a in report.artifacts]  # the order did change
