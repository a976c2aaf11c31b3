"""``edgeopt search`` on the shipped digits CNN: real passes, real compiles for ort-cpu, no mocks."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import shutil
import sys
from pathlib import Path

import onnx_ir as ir
import pytest
from rich.console import Console

from edgeopt import cli
from edgeopt.cli import console
from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.model_io import load_model
from edgeopt.search import STAGES, Cache, Evaluator, SearchConfig, search, seeds, select
from edgeopt.search.run import ask_trial
from edgeopt.search.space import seed_points, suggest


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", *argv])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _argv(digits: tuple[str, str], out: Path, *extra: str) -> list[str]:
    calib, val = digits
    return ["search", str(ONNX_MODEL), "--calib", calib, "--data", val, "--labels", "label", "-t", "ort-cpu",
            "--max-drop", "0.02", "--objective", "size", "-o", str(out), *extra]


def test_every_searchable_option_is_a_keyword_of_its_road() -> None:
    for stage in STAGES:
        assert stage.road is not None, stage.name
        if dataclasses.is_dataclass(stage.road):
            keywords = {f.name for f in dataclasses.fields(stage.road)}
        else:
            keywords = set(inspect.signature(stage.road).parameters)
        for option in (stage.switch, *stage.options):
            assert option.name in keywords, f"{stage.name}.{option.name} is not an option of {stage.road}"
        assert stage.off in (stage.switch.choices or (stage.switch.low,)), stage.name


def test_stages_fit_the_model_and_seeds_start_with_int8() -> None:
    stages = select(STAGES, (), load_model(ONNX_MODEL))
    names = [s.name for s in stages]
    assert names == ["prune", "low-rank", "share-weights", "distill", "quantize", "float16"]  # no layer to drop
    points = seed_points(stages)
    assert points[0][1] == {"prune": "off", "low-rank": "off", "share-weights": "off", "distill": "off",
                            "quantize": "static", "quantize.per_channel": True, "quantize.budget": 0.0,
                            "float16": "off"}
    seeded = [s for s in stages if s.seed]
    extra = [s for s in seeded if s.name == "quantize"] + [s for s in seeded if s.name != "quantize"]
    alone = [s for s in seeded if s.name != "quantize"] + [s for s in extra for _ in s.more_seeds]
    singles, combos = points[:len(alone) + 1], points[len(alone) + 1:]
    for (label, point), stage in zip(singles[1:], alone, strict=True):  # each single seed runs one stage alone
        assert label == stage.name
        assert [k for k in names if point[k] != next(s.off for s in stages if s.name == k)] == [stage.name]
    quantize = next(s for s in stages if s.name == "quantize")
    assert "weight-only" not in quantize.switch.choices and not quantize.more_seeds  # no MatMul, no table
    assert all(point.get("quantize") != "weight-only" for _, point in points)
    shared = [point for label, point in singles if label == "share-weights"]
    assert [p["share-weights"] for p in shared] == [64, 16, 256]
    assert [p["share-weights.data_aware"] for p in shared] == [True, True, False]  # data-aware: the stronger
    # then combinations with training; those naming a stage this CNN lacks (drop-layers) are left out
    assert [label for label, _ in combos] == ["share-weights+distill", "prune+distill+quantize"]
    assert all(point["distill"] != "off" for _, point in combos)
    assert seeds(stages) == [point for _, point in points]


def test_a_shared_prefix_of_stages_is_computed_once(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    cache = Cache(tmp_path / "cache")
    stages = select(STAGES, ("prune", "quantize"), load_model(ONNX_MODEL))
    evaluator = Evaluator(ONNX_MODEL, stages=stages, calibration=calib, data=val, target="ort-cpu",
                          labels="label", cache=cache)
    pruned = ("prune", {"criterion": "l1", "ratio": 0.3})
    first = evaluator.evaluate((pruned,))
    assert first.error is None and not first.cached and (cache.misses, cache.hits) == (2, 0)
    both = evaluator.evaluate((pruned, ("quantize", {"mode": "static", "per_channel": True, "budget": 0.0})))
    assert both.error is None and not both.cached
    assert (cache.misses, cache.hits) == (4, 1)  # the pruned model came from the cache
    assert both.scored is not None and first.scored is not None
    assert both.scored.size_bytes < first.scored.size_bytes
    again = evaluator.evaluate((pruned,))
    assert again.cached and again.scored == first.scored and cache.misses == 4


def test_search_writes_outputs_beats_int8_and_a_repeat_recomputes_nothing(
        digits: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGEOPT_CACHE_DIR", str(tmp_path / "cache"))
    args = ("--trials", "5", "--stages", "share-weights,quantize")
    code, out, err = _main(monkeypatch, capsys, _argv(digits, tmp_path / "one", *args))
    assert code == 0, err
    assert "Pareto front" in out and "winner: trial" in out and "int8 seed" in out
    one = tmp_path / "one"
    table = json.loads((one / "trials.json").read_text())
    trials = table["trials"]
    assert len(trials) == 5 and trials[0]["seed"] == "quantize" and trials[0]["feasible"]
    assert trials[1]["seed"] == "share-weights"
    with open(one / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3, 4]
    assert {"params", "metric", "size_bytes", "latency_ms", "macs", "feasible", "seconds", "cached"} <= set(rows[0])
    front = json.loads((one / "pareto.json").read_text())["front"]
    assert front and all(r["feasible"] for r in front)
    best = table["best"]
    assert best["size_bytes"] <= trials[0]["size_bytes"] and best["drop"] <= 0.02
    manifest = json.loads((one / "best" / "manifest.json").read_text())
    artifact = manifest["artifacts"][0]
    assert artifact["target"] == "ort-cpu" and (one / "best" / artifact["file"]).is_file()
    assert artifact["size_bytes"] == best["size_bytes"]
    assert (one / "best" / "report.html").is_file()

    code, out, err = _main(monkeypatch, capsys, [*_argv(digits, tmp_path / "two", *args), "--json"])
    assert code == 0, err
    again = json.loads(out)
    assert err == ""  # no progress bar with --json
    assert again["computed"] == 0 and again["cache_hits"] >= 5
    repeat = json.loads((tmp_path / "two" / "trials.json").read_text())["trials"]
    assert all(r["cached"] for r in repeat)
    assert [r["params"] for r in repeat] == [r["params"] for r in trials]
    assert again["best"]["size_bytes"] == best["size_bytes"]


def test_resume_continues_the_study_without_recomputing(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    config = SearchConfig(target="ort-cpu", max_drop=0.02, trials=3, stages=("prune", "quantize"), labels="label")
    first = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, config=config,
                   cache=Cache(tmp_path / "cache"))
    assert [r.number for r in first.trials] == [0, 1, 2]
    cache = Cache(tmp_path / "cache")
    resumed = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val,
                     config=dataclasses.replace(config, trials=5, resume=True), cache=cache)
    assert [r.number for r in resumed.trials] == [0, 1, 2, 3, 4]
    assert resumed.trials[:3] == first.trials  # read back from the study, not run again
    whole = search(ONNX_MODEL, tmp_path / "whole", calibration=calib, data=val,
                   config=dataclasses.replace(config, trials=5), cache=Cache(tmp_path / "cache"))
    assert [r.params for r in whole.trials] == [r.params for r in resumed.trials]  # as if never stopped
    assert cache.misses <= 2 * 3  # only the two new candidates' stages and scores, if they are new at all
    done = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val,
                  config=dataclasses.replace(config, trials=5, resume=True), cache=Cache(tmp_path / "cache"))
    assert done.stopped == "resumed-complete" and done.computed == 0 and len(done.trials) == 5


@pytest.mark.parametrize(("extra", "says"), [
    (("--objective", "speed"), "--objective must be one of size, latency, macs"),
    (("--stages", "prune,fuse"), "unknown stage(s) fuse"),
    (("--max-drop", "2"), "--max-drop is a drop of the metric"),
    (("-t", "ort-cpux"), "ort-cpu"),
])
def test_bad_options_answer_in_one_line(digits: tuple[str, str], tmp_path: Path, extra: tuple[str, ...], says: str,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(monkeypatch, capsys, [*_argv(digits, tmp_path / "out"), *extra])
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert says in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_an_existing_search_needs_resume(digits: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "study.journal").write_text("")
    code, _, err = _main(monkeypatch, capsys, _argv(digits, tmp_path / "out"))
    assert code == 1 and "holds a search already. Add --resume" in err


def test_drop_layers_stage_counts_the_models_droppable_layers(tmp_path: Path) -> None:
    import onnx

    from edgeopt.testing.residual_models import residual_cnn

    path = tmp_path / "residual.onnx"
    onnx.save(residual_cnn(blocks=3), path)
    (stage,) = select(STAGES, ("drop-layers",), load_model(path))
    assert (stage.switch.low, stage.switch.high) == (0, 2)
    assert seeds([stage]) == [{"drop-layers": 1}]


def test_time_limit_and_a_lost_cache_entry(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    config = SearchConfig(target="ort-cpu", max_drop=0.02, trials=1, stages=("quantize",), labels="label")
    first = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, config=config,
                   cache=Cache(tmp_path / "cache"))
    assert first.best is not None and first.best.seed == "quantize"
    shutil.rmtree(tmp_path / "cache")
    stopped = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, cache=Cache(tmp_path / "other"),
                     config=dataclasses.replace(config, trials=3, resume=True, time_limit=0.0))
    assert stopped.stopped == "time-limit" and len(stopped.trials) == 1  # no trial starts after the limit
    # the winner's model is gone with the first cache: it is rebuilt from the trial's parameters
    assert stopped.best is not None and stopped.computed == 2 and (tmp_path / "out" / "best.onnx").is_file()


def test_two_ray_workers_find_what_one_process_finds(digits: tuple[str, str], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    calib, val = digits
    config = SearchConfig(target="ort-cpu", max_drop=0.02, trials=3, stages=("prune", "share-weights", "quantize"),
                          labels="label")  # three trials: the three seeds, the same list either way
    serial = search(ONNX_MODEL, tmp_path / "serial", calibration=calib, data=val, config=config,
                    cache=Cache(tmp_path / "serial-cache"))
    parallel = search(ONNX_MODEL, tmp_path / "parallel", calibration=calib, data=val,
                      config=dataclasses.replace(config, workers=2), cache=Cache(tmp_path / "parallel-cache"))
    assert parallel.computed == serial.computed > 0  # the work was done (in the Ray workers) and counted
    assert [r.params for r in parallel.trials] == [r.params for r in serial.trials]
    assert [(r.metric, r.size_bytes) for r in parallel.trials] == [(r.metric, r.size_bytes) for r in serial.trials]
    assert parallel.best is not None and serial.best is not None
    assert parallel.best.params == serial.best.params


def test_a_trial_left_running_by_a_killed_search_runs_again_on_resume(digits: tuple[str, str], tmp_path: Path) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    calib, val = digits
    config = SearchConfig(target="ort-cpu", max_drop=0.02, trials=2, stages=("share-weights", "quantize"),
                          labels="label")
    search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, config=config, cache=Cache(tmp_path / "cache"))
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "out" / "study.journal")))
    # the search's own next trial, asked and sampled but never told: what a SIGKILL mid-trial leaves behind
    left = ask_trial(optuna.load_study(study_name="edgeopt-search", storage=storage), config.seed)
    suggest(left, select(STAGES, config.stages, load_model(ONNX_MODEL)))
    resumed = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, cache=Cache(tmp_path / "cache"),
                     config=dataclasses.replace(config, trials=4, resume=True))
    assert len(resumed.trials) == 4
    assert all(r.state == "complete" for r in resumed.trials)
    assert left.number not in [r.number for r in resumed.trials]  # left out of the table, its parameters rerun
    whole = search(ONNX_MODEL, tmp_path / "whole", calibration=calib, data=val, cache=Cache(tmp_path / "cache"),
                   config=dataclasses.replace(config, trials=4))
    assert [r.params for r in resumed.trials] == [r.params for r in whole.trials]


def test_weight_only_mode_is_searched_only_where_a_matmul_or_table_can_take_it() -> None:
    cnn = next(s for s in select(STAGES, ("quantize",), load_model(ONNX_MODEL)))
    assert cnn.switch.choices == ("off", "dynamic", "static")
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 64] x) => (float[4, 64] y) <float[64, 64] w> { y = MatMul(x, w) }"""
    matmul = next(s for s in select(STAGES, ("quantize",), ir.from_onnx_text(text)))
    assert "weight-only" in matmul.switch.choices and matmul.more_seeds


def test_a_latency_search_times_its_fastest_trials_again_side_by_side(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    config = SearchConfig(target="ort-cpu", max_drop=0.02, trials=4, stages=("share-weights", "quantize"),
                          labels="label", objective="latency", patience=0)
    result = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, config=config,
                    cache=Cache(tmp_path / "cache"))
    feasible = [r for r in result.trials if r.feasible]
    confirmed = [r for r in feasible if r.latency_trial_ms is not None]
    assert len(feasible) >= 2 and len(confirmed) == min(len(feasible), 6)
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in confirmed)
    assert any(" -> " not in r.stages for r in confirmed)  # the fastest single pass is among them
    assert all(r.latency_trial_ms is None for r in result.trials if r not in confirmed)
    assert result.best is not None and result.best in confirmed
    assert result.best.latency_ms == min(r.latency_ms or 0.0 for r in confirmed)  # picked on the confirmed p50s
    table = json.loads((tmp_path / "out" / "trials.json").read_text())["trials"]
    assert [t["latency_trial_ms"] for t in table] == [r.latency_trial_ms for r in result.trials]
    assert all(Path(t["compiled"]).is_dir() for t in table if t["feasible"])  # what the latency check reuses
