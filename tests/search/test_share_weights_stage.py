"""The share-weights stage with the search's calibration data: data-aware codebooks against plain k-means."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.errors import PassOptionError
from edgeopt.search.screen import Screen
from edgeopt.search.stages import cluster_weights_file


def test_data_aware_codebooks_keep_the_outputs_closer(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    screen = Screen(ONNX_MODEL, data=val, metric="cosine")  # cosine of the logits, finer than accuracy
    scores = {}
    for data_aware in (False, True):
        out = tmp_path / f"{data_aware}.onnx"
        rows = cluster_weights_file(ONNX_MODEL, out, clusters=4, data_aware=data_aware, calibration=calib,
                                    samples=64)
        onnx.checker.check_model(str(out), full_check=True)
        assert rows and all(r.clusters == 4 and r.bytes_after < r.bytes_before for r in rows)
        scores[data_aware] = screen.score(out)[1]
    assert scores[True] > scores[False], scores


def test_data_aware_needs_calibration(tmp_path: Path) -> None:
    with pytest.raises(PassOptionError, match="data_aware needs calibration data"):
        cluster_weights_file(ONNX_MODEL, tmp_path / "out.onnx", clusters=16, data_aware=True)
