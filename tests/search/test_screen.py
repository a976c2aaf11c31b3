"""Stopping a candidate early (its model already misses the budget by far) and the share-weights stage's groups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import create_session, run_session
from edgeopt.search import STAGES, Cache, Evaluator, select
from edgeopt.search.screen import Screen
from edgeopt.search.stages import cluster_weights_file

PRUNE = ("prune", {"criterion": "l1", "ratio": 0.5})
INT8 = ("quantize", {"mode": "static", "per_channel": True, "budget": 0.0})


def _evaluator(digits: tuple[str, str], cache: Cache, cut_drop: float | None) -> Evaluator:
    calib, val = digits
    stages = select(STAGES, ("prune", "quantize"), load_model(ONNX_MODEL))
    return Evaluator(ONNX_MODEL, stages=stages, calibration=calib, data=val, target="ort-cpu", labels="label",
                     cache=cache, cut_drop=cut_drop)


def test_screen_scores_the_original_as_its_own_reference(digits: tuple[str, str]) -> None:
    _, val = digits
    name, value, base = Screen(ONNX_MODEL, data=val, labels="label").score(ONNX_MODEL)
    data = np.load(val)
    session = create_session(ONNX_MODEL)
    logits = np.concatenate([run_session(session, {"image": data["image"][i:i + 1]})["logits"]
                             for i in range(len(data["label"]))])
    assert name == "accuracy" and value == base == pytest.approx(float(np.mean(logits.argmax(1) == data["label"])))
    assert Screen(ONNX_MODEL, data=val).score(ONNX_MODEL)[:2] == ("agreement", 1.0)


def test_past_its_memory_the_screen_runs_the_reference_again_with_the_same_scores(digits: tuple[str, str],
                                                                                 tmp_path: Path) -> None:
    _, val = digits
    noisy = load_model(ONNX_MODEL)
    rng = np.random.default_rng(0)
    for value in noisy.graph.initializers.values():
        array = value.const_value.numpy()  # type: ignore[union-attr]
        if array.dtype == np.float32:
            value.const_value = ir.tensor(array + rng.normal(0, 2 * array.std(), array.shape).astype(np.float32))
    changed = save_model(noisy, tmp_path / "noisy.onnx")
    kept_all, kept_one = Screen(ONNX_MODEL, data=val), Screen(ONNX_MODEL, data=val, max_bytes=50)
    assert kept_all.score(changed) == kept_one.score(changed)
    assert kept_one.score(changed)[1] < 1.0  # a real difference was scored
    assert len(kept_one._expected or []) == 1 < len(kept_all._expected or [])  # noqa: SLF001


def test_a_candidate_that_misses_the_budget_by_far_stops_after_that_stage(digits: tuple[str, str],
                                                                           tmp_path: Path) -> None:
    full = _evaluator(digits, Cache(tmp_path / "full"), None).evaluate((PRUNE,))
    assert full.scored is not None and full.cut is None and full.scored.latency_ms is not None
    drop = full.scored.drop
    assert drop > 0  # half the channels gone: some digits are lost even after the repair
    cache = Cache(tmp_path / "cut")
    cut = _evaluator(digits, cache, drop / 2).evaluate((PRUNE, INT8))
    assert cut.error is None and cut.cut == "prune" and cut.scored is not None
    assert cut.scored.latency_ms is None  # no compile, no timing
    assert cut.scored.metric == pytest.approx(full.scored.metric, abs=1.5 / 200)  # the same model, in ORT
    assert cache.misses == 1  # the prune stage only: neither quantize nor the compile ran
    assert not list((tmp_path / "cut").glob("candidates/*"))
    kept = _evaluator(digits, Cache(tmp_path / "kept"), drop + 0.05).evaluate((PRUNE, INT8))
    assert kept.cut is None and kept.scored is not None and kept.scored.latency_ms is not None


def test_share_weights_clusters_lookup_tables_on_their_own(tmp_path: Path) -> None:
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (int64[4] ids, float[4, 64] x) => (float[4, 64] y) <float[1000, 64] table, float[64, 64] w> {
        e = Gather(table, ids)
        m = MatMul(x, w)
        y = Add(e, m)
    }"""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, shape in (("table", (1000, 64)), ("w", (64, 64))):
        model.graph.initializer.append(onnx.numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    rows = cluster_weights_file(src, tmp_path / "out.onnx", clusters=64, embedding_clusters=8)
    assert {r.name: r.clusters for r in rows} == {"w": 64, "table": 8}
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)
    feeds = {"ids": np.array([0, 5, 999, 7]), "x": rng.normal(size=(4, 64)).astype(np.float32)}
    before = run_session(create_session(src), feeds)["y"]
    after = run_session(create_session(tmp_path / "out.onnx"), feeds)["y"]
    assert not np.array_equal(before, after)
    assert np.abs(after - before).max() < 0.3 * np.abs(before).max()  # 8 values per table: coarse, not broken
    same = cluster_weights_file(src, tmp_path / "same.onnx", clusters=64)
    assert {r.name: r.clusters for r in same} == {"w": 64, "table": 64}


def test_a_quantization_that_changes_no_weight_is_a_failed_trial(digits: tuple[str, str], tmp_path: Path) -> None:
    # the digits CNN has no MatMul and no lookup table: weight-only mode would hand back the float model
    outcome = _evaluator(digits, Cache(tmp_path / "cache"), None).evaluate(
        (("quantize", {"mode": "weight-only", "bits": 8, "embedding_bits": 8}),))
    assert outcome.scored is None and outcome.error is not None
    assert "no weight of this model was quantized" in outcome.error
    int8 = _evaluator(digits, Cache(tmp_path / "cache"), None).evaluate((INT8,))
    assert int8.error is None and int8.scored is not None


def test_the_float16_stage_halves_the_weights_and_keeps_the_answers(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    stages = select(STAGES, ("float16",), load_model(ONNX_MODEL))
    evaluator = Evaluator(ONNX_MODEL, stages=stages, calibration=calib, data=val, target="ort-cpu", labels="label",
                          cache=Cache(tmp_path / "cache"))
    outcome = evaluator.evaluate((("float16", {"precision": "float16"}),))
    assert outcome.error is None and outcome.scored is not None and outcome.model is not None
    model = onnx.load(outcome.model)
    onnx.checker.check_model(model, full_check=True)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    assert {i.data_type for i in model.graph.initializer if i.data_type in floats} == {onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    weights = sum(onnx.numpy_helper.to_array(i).nbytes for i in onnx.load(ONNX_MODEL).graph.initializer
                  if i.data_type == onnx.TensorProto.FLOAT)
    saved = Path(ONNX_MODEL).stat().st_size - outcome.scored.size_bytes
    assert 0.45 * weights < saved <= 0.5 * weights + 1024  # half of every float32 weight's bytes
    assert outcome.scored.drop <= 0.005  # at most one of 200 digits changes its answer


def test_static_quantization_of_clustered_weights_is_refused(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    stages = select(STAGES, ("share-weights", "quantize"), load_model(ONNX_MODEL))
    evaluator = Evaluator(ONNX_MODEL, stages=stages, calibration=calib, data=val, target="ort-cpu", labels="label",
                          cache=Cache(tmp_path / "cache"))
    clustered = ("share-weights", {"clusters": 16, "channel_scale": False, "embedding_clusters": 0})
    outcome = evaluator.evaluate((clustered, INT8))
    assert outcome.scored is None and outcome.error is not None and "after share-weights" in outcome.error
    assert evaluator.evaluate((clustered,)).scored is not None  # clustering alone runs
