"""The search report (rendered by a real headless Chromium), NSGA-II over two objectives, and the stop rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.search import Cache, SearchConfig, search
from edgeopt.search.records import TrialRecord, stalled
from edgeopt.testing import browser


def _trial(number: int, size: int, *, feasible: bool = True, latency: float = 1.0) -> TrialRecord:
    return TrialRecord(number, "complete", "x", metric=1.0, drop=0.0 if feasible else 0.5, size_bytes=size,
                       latency_ms=latency, feasible=feasible)


def test_the_stop_rule_counts_trials_since_the_last_real_improvement() -> None:
    records = [_trial(0, 100), _trial(1, 101), _trial(2, 50, feasible=False), _trial(3, 100 - 0.5)]
    assert stalled(records, ("size",), after=1, patience=3)  # 0.5 % smaller is no improvement, infeasible neither
    assert not stalled(records, ("size",), after=1, patience=4)
    assert not stalled(records, ("size",), after=1, patience=0)  # 0: never
    assert not stalled([*records, _trial(4, 90)], ("size",), after=1, patience=1)
    assert not stalled([_trial(0, 100, feasible=False)] * 5, ("size",), after=1, patience=2)  # no budget met yet
    # two objectives: joining the front is the improvement (larger but faster)
    two = [_trial(0, 100, latency=2.0), _trial(1, 120, latency=1.0), _trial(2, 130, latency=3.0)]
    assert not stalled(two, ("size", "latency"), after=1, patience=2)
    assert stalled(two, ("size", "latency"), after=1, patience=1)


def test_a_search_stops_when_it_stops_improving(digits: tuple[str, str], tmp_path: Path) -> None:
    calib, val = digits
    config = SearchConfig(target="ort-cpu", max_drop=0.02, trials=14, stages=("quantize",), labels="label",
                          patience=2)
    result = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, config=config,
                    cache=Cache(tmp_path / "cache"))
    assert result.stopped == "no-improvement", [(r.number, r.size_bytes, r.feasible) for r in result.trials]
    assert 3 <= len(result.trials) < 14
    assert stalled(result.trials, ("size",), after=1, patience=2)
    assert not stalled(result.trials[:-1], ("size",), after=1, patience=2)  # it stopped as soon as the rule held


def test_two_objectives_search_with_nsga2_and_the_page_renders(digits: tuple[str, str], tmp_path: Path) -> None:
    import optuna

    calib, val = digits
    config = SearchConfig(target="ort-cpu", max_drop=0.02, trials=5, stages=("share-weights", "quantize"),
                          labels="label", objective="size,latency")
    result = search(ONNX_MODEL, tmp_path / "out", calibration=calib, data=val, config=config,
                    cache=Cache(tmp_path / "cache"))
    out = tmp_path / "out"
    study = optuna.load_study(study_name="edgeopt-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.trials if t.values)
    trials = json.loads((out / "trials.json").read_text())["trials"]
    feasible = [t for t in trials if t["feasible"]]

    def point(t: dict) -> tuple[float, float, float]:
        return t["drop"], t["size_bytes"], t["latency_ms"]

    undominated = {point(t) for t in feasible
                   if not any(all(a <= b for a, b in zip(point(o), point(t), strict=True)) and point(o) != point(t)
                              for o in feasible)}
    assert {point(t) for t in json.loads((out / "pareto.json").read_text())["front"]} == undominated
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    if browser.chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    shown_page = browser.render_report(out / "report.html", tmp_path)
    assert not shown_page.online and shown_page.labels >= 2 and shown_page.overlaps == 0
    dom = shown_page.dom
    assert dom.count('class="chart scatter"') == 2  # the metric vs size, and vs latency
    shown = browser.table_rows(dom, "trials")
    assert [int(r[0]) for r in shown] == [t["number"] for t in trials]
    assert result.best is not None
    assert re.search(rf'<tr class="hl"><td class="n" data-v="{result.best.number}">', dom)
    by_size = browser.table_rows(browser.dump_dom(out / "report.html", "sort=size KiB"), "trials")
    sizes = [float(r[5]) for r in by_size if r[5] != "-"]
    assert sizes == sorted(sizes) and len(sizes) == sum(t["size_bytes"] is not None for t in trials)
