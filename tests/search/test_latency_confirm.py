"""A latency search's fastest trials timed again side by side: real compiled artifacts, real ORT runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.deploy.compile import compile_model
from edgeopt.search import latency
from edgeopt.search.latency import confirm_latency
from edgeopt.search.records import TrialRecord, best
from edgeopt.testing.timing_models import matmul_chain


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """Validation data and three compile folders: a Relu, 4 and 16 MatMuls (0, 17 and 67 M MACs a sample)."""
    root = tmp_path_factory.mktemp("chains")
    np.savez(root / "val.npz", x=np.random.default_rng(0).standard_normal((8, 64, 256)).astype(np.float32))
    folders = {}
    for name, layers in (("relu", 0), ("mm4", 4), ("mm16", 16)):
        compile_model(matmul_chain(root / f"{name}.onnx", layers), root / name, targets=["ort-cpu"])
        folders[name] = root / name
    return root, folders


def _record(number: int, stages: str, trial_ms: float, folder: Path | None, *, seed: str | None = None) -> TrialRecord:
    return TrialRecord(number, "complete", stages, seed=seed, metric=1.0, drop=0.0, size_bytes=1, latency_ms=trial_ms,
                       feasible=True, compiled=str(folder) if folder else None,
                       model=str(folder.parent / f"{folder.name}.onnx") if folder else None)


def _confirm(root: Path, records: list[TrialRecord], **kwargs: object) -> list[TrialRecord]:
    return confirm_latency(records, data=str(root / "val.npz"), reference=root / "relu.onnx", target="ort-cpu",
                           calibration="random:4", model_of=lambda r: Path(str(r.model)), rounds=3, limit=8,
                           **kwargs)  # type: ignore[arg-type]


def test_trial_p50s_taken_under_another_load_do_not_pick_the_winner(chains: tuple[Path, dict[str, Path]],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root, folders = chains
    compiles = []
    monkeypatch.setattr(latency, "compile_model", lambda *a, **k: compiles.append(a))
    # the 16-MatMul model read fastest in its trial (a quiet minute); the Relu slowest (a busy one)
    records = [_record(0, "quantize(mode=static)", 9.0, folders["mm4"], seed="quantize"),
               _record(1, "prune(ratio=0.3) -> quantize(mode=static)", 0.001, folders["mm16"]),
               _record(2, "share-weights(clusters=16)", 50.0, folders["relu"]),
               _record(3, "prune(ratio=0.3) -> quantize(mode=static)", 0.002, folders["mm16"])]  # a cache hit
    assert best(records, "latency") is records[1]
    confirmed = _confirm(root, records, baseline=records[0])
    assert sorted(r.number for r in confirmed) == [0, 1, 2, 3]
    assert [r.latency_trial_ms for r in records] == [9.0, 0.001, 50.0, 0.002]
    assert records[1].latency_ms == records[3].latency_ms  # one candidate, timed once
    assert records[2].latency_ms < records[0].latency_ms < records[1].latency_ms  # the work, not the minute
    assert best(confirmed, "latency") is records[2]
    assert compiles == []  # every trial's compile folder was on this machine: reused


def test_a_trial_without_its_folder_is_compiled_again_and_one_that_fails_is_left_out(
        chains: tuple[Path, dict[str, Path]]) -> None:
    root, folders = chains
    records = [_record(0, "quantize(mode=static)", 1.0, folders["mm4"], seed="quantize"),
               _record(1, "share-weights(clusters=16)", 2.0, None),  # ran on another machine
               _record(2, "low-rank(energy=0.9)", 3.0, None)]
    records[1].model = str(root / "relu.onnx")
    records[2].model = str(root / "missing.onnx")
    confirmed = _confirm(root, records, baseline=records[0])
    assert sorted(r.number for r in confirmed) == [0, 1]
    assert records[2].latency_trial_ms is None and records[2].latency_ms == 3.0  # left with its trial p50
    assert records[1].latency_ms is not None and records[1].latency_ms < records[0].latency_ms


def test_fewer_than_two_candidates_keep_their_trial_p50s(chains: tuple[Path, dict[str, Path]]) -> None:
    root, folders = chains
    records = [_record(0, "quantize(mode=static)", 1.0, folders["mm4"], seed="quantize"),
               _record(1, "prune(ratio=0.3)", 2.0, folders["mm16"])]
    records[1].feasible = False
    assert _confirm(root, records, baseline=records[0]) == []
    assert records[0].latency_ms == 1.0 and records[0].latency_trial_ms is None
