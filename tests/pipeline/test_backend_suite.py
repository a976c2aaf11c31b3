"""The ``cleanup`` preset on a deterministic sample of the ONNX backend conformance models.

The whole suite runs with ``python bench/backend_sweep.py``; this sample keeps the
default test run fast. It takes every shipped model (``light``, ``simple``,
``pytorch-*``: IR 3 models whose initializers are also graph inputs, opset 6
models), the node cases of the failure classes other optimizers hit (sequences,
optionals, If/Loop/Scan subgraphs, SplitToSequence, the expanded
normalizations, dropout, batchnorm, identity, constants and casts, opset 1 and
ai.onnx.ml-only models), and every eighth of the other node cases.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.testing.backend_suite import (
    BackendCase,
    check_case,
    cleanup_transform,
    collect_cases,
    compare_structured,
)

_FAILURE_CLASSES = re.compile(
    r"sequence|optional|/test_(if|loop|scan)|split_to_sequence|group_norm|layer_norm"
    r"|dropout|batchnorm|identity|constant|cast|/test_not_|ai_onnx_ml"
)
_EVERY_NTH = 8


def _sample(cases: list[BackendCase]) -> list[BackendCase]:
    node = [c for c in cases if c.suite == "node"]
    rest = [c for c in node if not _FAILURE_CLASSES.search(c.name)]
    chosen = {c.name for c in cases if c.suite != "node" or _FAILURE_CLASSES.search(c.name)}
    chosen |= {c.name for c in rest[::_EVERY_NTH]}
    return [c for c in cases if c.name in chosen]


ALL_CASES = collect_cases()
SAMPLE = _sample(ALL_CASES)
_BY_NAME = {c.name: c for c in ALL_CASES}


@pytest.mark.parametrize("case", SAMPLE, ids=[c.name for c in SAMPLE])
def test_cleanup_keeps_backend_case(case: BackendCase) -> None:
    outcome = check_case(case, cleanup_transform)
    if outcome.status == "not-runnable":
        pytest.skip("ONNX Runtime cannot run the original model")
    assert outcome.status == "ok", outcome.detail


def _add_to_sub(model: ir.Model) -> ir.Model:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Add":
            node.op_type = "Sub"
    return model


def _raise(model: ir.Model) -> ir.Model:
    raise ValueError("deliberate failure")


def test_harness_reports_a_wrong_transform_as_broken() -> None:
    outcome = check_case(_BY_NAME["node/test_add"], _add_to_sub)
    assert outcome.status == "broken"
    assert "max abs error" in outcome.detail


def test_harness_reports_a_raising_transform_as_crashed() -> None:
    outcome = check_case(_BY_NAME["node/test_add"], _raise)
    assert outcome.status == "crashed"
    assert outcome.detail == "transform: ValueError: deliberate failure"


def test_harness_passes_the_identity_transform() -> None:
    for name in ("node/test_add", "simple/test_sequence_model1", "light/light_squeezenet"):
        assert check_case(_BY_NAME[name], lambda m: m).status == "ok", name


def test_sample_is_deterministic_and_covers_every_suite() -> None:
    assert [c.name for c in _sample(collect_cases())] == [c.name for c in SAMPLE]
    assert {c.suite for c in SAMPLE} == {c.suite for c in ALL_CASES}
    if onnx.__version__ == "1.23.2":
        assert len(ALL_CASES) == 2033  # 149 shipped with the wheel + 1,884 node cases


def test_compare_structured_sees_sequences_optionals_and_nans() -> None:
    a, nan = np.ones(2, np.float32), np.array([np.nan, 1.0], np.float32)
    same = {"s": [a, nan], "o": None, "m": {1: a}}
    assert compare_structured(same, {"s": [a, nan.copy()], "o": None, "m": {1: a}},
                              rtol=1e-3, atol=1e-4) == []
    assert compare_structured({"s": [a]}, {"s": [a, a]}, rtol=1e-3, atol=1e-4)
    assert compare_structured({"o": None}, {"o": a}, rtol=1e-3, atol=1e-4)
    assert compare_structured({"x": a}, {"x": a.astype(np.float64)}, rtol=1e-3, atol=1e-4)
    assert compare_structured({"x": a, "y": a}, {"y": a, "x": a}, rtol=1e-3, atol=1e-4)


def test_node_cases_generate_deterministically_into_a_given_folder(tmp_path: Path) -> None:
    fresh = {c.name: c for c in collect_cases(tmp_path)}
    assert (tmp_path / "node").is_dir() and fresh.keys() == _BY_NAME.keys()
    for name, case in fresh.items():  # two generations, byte for byte
        for ours, theirs in zip(_files(case), _files(_BY_NAME[name]), strict=True):
            assert ours.read_bytes() == theirs.read_bytes(), ours
    assert collect_cases(tmp_path) == list(fresh.values())  # reused, not regenerated


def _files(case: BackendCase) -> list[Path]:
    return sorted(p for p in case.model_path.parent.rglob("*") if p.is_file())
