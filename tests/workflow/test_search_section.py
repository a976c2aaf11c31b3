"""A recipe's ``search:`` section: validated key by key, then run from the recipe's optimized model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.errors import RecipeError
from edgeopt.core.model_io import load_model
from edgeopt.workflow.optimize import run_recipe
from edgeopt.workflow.recipe import load_recipe

HEAD = "model: model.onnx\noutput: out/model.opt.onnx\npasses: [cleanup]\n"
SEARCH = ("search:\n  output: out/search\n  calibration: random:16\n  data: random:32\n  target: ort-cpu\n"
          "  max_drop: 0.05\n")


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    shutil.copy(ONNX_MODEL, tmp_path / "model.onnx")
    path = tmp_path / "recipe.yaml"
    path.write_text(HEAD + SEARCH + extra)
    return path


def test_the_section_reads_every_option(tmp_path: Path) -> None:
    path = _recipe(tmp_path, "  objective: [size, latency]\n  stages: [prune, quantize]\n  trials: 7\n  patience: 3\n"
                             "  labels: labels.npy\n  time_limit: 30\n  workers: 1\n  screen: false\n")
    spec = load_recipe(path).search
    assert spec is not None
    assert spec.output == tmp_path / "out" / "search" and spec.calibration == "random:16"
    config = spec.config
    assert (config.objectives, config.stages, config.trials, config.patience, config.time_limit) == (
        ("size", "latency"), ("prune", "quantize"), 7, 3, 30)
    assert not config.screen and config.cut_drop is None
    assert config.labels == str(tmp_path / "labels.npy")  # a path, relative to the recipe


@pytest.mark.parametrize(("extra", "key", "says"), [
    ("  objective: speed\n", "search.objective", "unknown speed"),
    ("  stages: [prune, fuse]\n", "search.stages", "unknown fuse"),
    ("  trials: many\n", "search.trials", "expects int"),
    ("  trials: 0\n", "search.trials", "expects 1 or more"),
    ("  resume: 1\n", "search.resume", "expects bool"),
    ("  sampler: tpe\n", "search.sampler", "unknown key"),
])
def test_a_bad_key_is_named(tmp_path: Path, extra: str, key: str, says: str) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe(_recipe(tmp_path, extra))
    message = str(caught.value)
    assert f": {key}: " in message and says in message and "\n" not in message


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    shutil.copy(ONNX_MODEL, tmp_path / "model.onnx")
    (tmp_path / "recipe.yaml").write_text(HEAD + SEARCH.replace("  target: ort-cpu\n", ""))
    with pytest.raises(RecipeError, match="search.target: missing"):
        load_recipe(tmp_path / "recipe.yaml")


def test_the_recipe_searches_from_its_optimized_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    result = run_recipe(load_recipe(_recipe(tmp_path, "  trials: 2\n  stages: [share-weights, quantize]\n")))
    out = tmp_path / "out" / "search"
    assert result.artifacts["search/report.html"] == out / "report.html" and (out / "report.html").is_file()
    table = json.loads((out / "trials.json").read_text())
    assert len(table["trials"]) == 2 and table["trials"][0]["seed"] == "quantize"
    optimized = load_model(tmp_path / "out" / "model.opt.onnx")
    best = load_model(out / "best.onnx")  # a candidate of the optimized model: same signature
    assert [v.name for v in best.graph.inputs] == [v.name for v in optimized.graph.inputs]
