"""Model and data shipped through Ray's object store to workers that cannot see the search's folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.model_io import load_model, save_model
from edgeopt.search import STAGES, Cache, Evaluator, Outcome, select
from edgeopt.search.parallel import runner
from edgeopt.search.ship import pack, unpack

CANDIDATES = ((("quantize", {"mode": "static", "per_channel": True, "budget": 0.0}),),
              (("prune", {"criterion": "l1", "ratio": 0.3}),))


def _private_copy(digits: tuple[str, str], root: Path, *, external_data: bool = False) -> Evaluator:
    """An evaluator over copies of the model and data under ``root`` (deleted by the tests once packed)."""
    calib, val = digits
    root.mkdir()
    if external_data:
        save_model(load_model(ONNX_MODEL), root / "model.onnx", external_data=True)
    else:
        shutil.copy(ONNX_MODEL, root / "model.onnx")
    shutil.copytree(calib, root / "calib")
    shutil.copy(val, root / "val.npz")
    stages = select(STAGES, ("prune", "quantize"), load_model(root / "model.onnx"))
    return Evaluator(root / "model.onnx", stages=stages, calibration=str(root / "calib"),
                     data=str(root / "val.npz"), target="ort-cpu", labels="label", cache=Cache(root / "cache"))


def _scores(outcome: Outcome) -> tuple[object, ...]:
    assert outcome.error is None and outcome.scored is not None, outcome.error
    s = outcome.scored
    return s.metric_name, s.metric, s.size_bytes, s.macs


def test_a_packed_search_runs_from_its_bundle_alone(digits: tuple[str, str], tmp_path: Path) -> None:
    evaluator = _private_copy(digits, tmp_path / "private")
    expected = _scores(evaluator.evaluate(CANDIDATES[0]))
    bundle = pack(evaluator)
    assert sorted(bundle.files) == ["calibration/batch_0000.npz", "calibration/batch_0128.npz", "data/val.npz",
                                    "model/model.onnx"]
    assert bundle.specs["labels"] == "label"  # a key in the data, not a file
    shutil.rmtree(tmp_path / "private")
    moved = unpack(evaluator, bundle, root=tmp_path)
    assert not str(moved.model).startswith(str(tmp_path / "private"))
    assert moved.context.original == moved.model and moved.model.is_file()  # the distill stage's teacher
    outcome = moved.evaluate(CANDIDATES[0])
    assert _scores(outcome) == expected and not outcome.cached  # its own cache, the same numbers
    assert moved.evaluate(CANDIDATES[0]).cached


def test_external_data_travels_with_the_model(digits: tuple[str, str], tmp_path: Path) -> None:
    evaluator = _private_copy(digits, tmp_path / "private", external_data=True)
    expected = _scores(evaluator.evaluate(CANDIDATES[0]))
    bundle = pack(evaluator)
    assert sorted(r for r in bundle.files if r.startswith("model/")) == ["model/model.onnx", "model/model.onnx.data"]
    shutil.rmtree(tmp_path / "private")
    assert _scores(unpack(evaluator, bundle, root=tmp_path).evaluate(CANDIDATES[0])) == expected


def test_ray_workers_get_the_model_and_data_through_the_object_store(digits: tuple[str, str],
                                                                     tmp_path: Path) -> None:
    pytest.importorskip("ray")
    evaluator = _private_copy(digits, tmp_path / "private")
    expected = [_scores(evaluator.evaluate(c)) for c in CANDIDATES]
    shutil.rmtree(tmp_path / "private" / "cache")
    with runner(evaluator, workers=2, ship=True) as run:
        shutil.rmtree(tmp_path / "private")  # packed and put: the workers cannot read these paths any more
        outcomes = run(CANDIDATES)
    assert [_scores(o) for o in outcomes] == expected
    assert all(o.computed > 0 for o in outcomes)  # computed on the workers, from the shipped bytes
