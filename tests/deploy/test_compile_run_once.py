"""edgeopt compile runs every artifact once in its own runtime before it records the target as built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.core.runtime import Feeds
from edgeopt.deploy.compile import compile_model
from edgeopt.deploy.target_registry import get_target
from edgeopt.testing.bad_models import write_good_model


def test_each_artifact_runs_once_on_model_shaped_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = type(get_target("ort-cpu"))
    runs: list[Feeds] = []
    real_run = cls.run

    def spy(self: object, artifact: Path, feeds: Feeds) -> Feeds:
        runs.append(feeds)
        return real_run(self, artifact, feeds)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "run", spy)

    result = compile_model(write_good_model(tmp_path), tmp_path / "out", targets=["ort-cpu"])

    assert result.manifest.artifacts[0].ok
    assert len(runs) == 1 and runs[0]["x"].shape == (1, 32) and runs[0]["x"].dtype == np.float32


def test_an_artifact_that_does_not_run_is_a_failed_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, artifact: Path, feeds: Feeds) -> Feeds:
        raise RuntimeError("Failed to load model: opset 30 is not supported\nstack trace ...")

    monkeypatch.setattr(type(get_target("ort-cpu")), "run", broken)

    result = compile_model(write_good_model(tmp_path), tmp_path / "out", targets=["ort-cpu"])

    (entry,) = result.manifest.artifacts
    assert entry.error == "ConversionError"
    assert "written but does not run (Failed to load model: opset 30 is not supported)" in str(entry.message)
    assert "edgeopt check MODEL -t ort-cpu" in str(entry.message)
    assert not (tmp_path / "out" / "ort-cpu").exists()  # no artifact beside a manifest that says it failed
