"""The search's distill stage: the search's input model teaches a compressed candidate on the calibration data."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.model_io import load_model
from edgeopt.search import STAGES, Cache, Evaluator, select

PRUNED = ("prune", {"criterion": "l1", "ratio": 0.85})  # beyond the searched range: a clear loss


@pytest.fixture
def evaluator(digits: tuple[str, str], tmp_path: Path) -> Evaluator:
    calib, val = digits
    stages = select(STAGES, ("prune", "distill", "quantize"), load_model(ONNX_MODEL))
    # cut_drop 0: every model the screen sees misses the budget, so a cut shows where the screen looked
    return Evaluator(ONNX_MODEL, stages=stages, calibration=calib, data=val, target="ort-cpu", labels="label",
                     cache=Cache(tmp_path / "cache"), cut_drop=0.0)


def test_distill_trains_the_pruned_candidate_and_the_screen_waits_for_it(evaluator: Evaluator) -> None:
    pruned = evaluator.evaluate((PRUNED,))
    assert pruned.error is None and pruned.cut == "prune" and pruned.scored is not None

    trained = evaluator.evaluate((PRUNED, ("distill", {"time_limit": 30, "lr": 1e-3})))

    assert trained.error is None, trained.error
    assert trained.cut == "distill"  # not cut after prune: the training stage after it may give accuracy back
    assert trained.scored is not None and trained.model is not None
    assert trained.computed == 1 and trained.hits == 1  # the pruned model came from the cache
    # same graph, new weights; scored in ORT on the 200 held-out digits against their labels
    before, after = onnx.load(str(pruned.model)), onnx.load(str(trained.model))
    assert [n.op_type for n in after.graph.node] == [n.op_type for n in before.graph.node]
    assert trained.scored.metric_name == "accuracy"
    assert trained.scored.metric > pruned.scored.metric + 0.02, (pruned.scored.metric, trained.scored.metric)
    again = evaluator.evaluate((PRUNED, ("distill", {"time_limit": 30, "lr": 1e-3})))
    assert again.cached and again.scored == trained.scored


def test_distill_needs_a_compression_stage_before_it(evaluator: Evaluator) -> None:
    outcome = evaluator.evaluate((("distill", {"time_limit": 30, "lr": 1e-3}),))
    assert outcome.scored is None and outcome.computed == 0
    assert outcome.error is not None and outcome.error.startswith("distill with no compression stage before it")
