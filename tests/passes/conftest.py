"""Fixtures shared by the pass tests.

``apply_pass`` runs one pass the way every pass test needs it: outputs through ONNX
Runtime (graph optimizations off) before and after, the ONNX checker (full check) on
the result, and the graph signature (input and output names, in order) unchanged.
Each test then asserts the structure it expects. ``op_counts`` counts op types in a
model, subgraphs included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.core.runtime import compare_outputs, random_feeds, run_model


def check_model(model: ir.Model) -> None:
    """The ONNX checker with full (strict shape inference) checking."""
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def _signature(model: ir.Model) -> tuple[list[str | None], list[str | None]]:
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]


def _apply_pass(
    pass_: ir.passes.PassBase,
    model: ir.Model,
    feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> ir.passes.PassResult:
    """Run ``pass_`` on ``model`` in place and check the model it leaves.

    ``feeds`` may be a list, to exercise several paths (e.g. both If branches);
    random inputs from ``np.random.default_rng(0)`` when omitted.
    """
    check_model(model)  # a test model that is already invalid proves nothing
    if feeds is None:
        feed_list: list[Mapping[str, np.ndarray]] = [random_feeds(model)]
    elif isinstance(feeds, Mapping):
        feed_list = [feeds]
    else:
        feed_list = list(feeds)
    before = [run_model(model, f) for f in feed_list]
    signature = _signature(model)
    result = pass_(model)
    assert result.model is model, "an in-place pass must return the model it was given"
    check_model(model)
    assert _signature(model) == signature, "graph input/output names changed"
    for f, expected in zip(feed_list, before, strict=True):
        deviation = compare_outputs(expected, run_model(model, f), rtol=rtol, atol=atol)
        assert deviation.ok, deviation.mismatches
    return result


def _op_counts(model: ir.Model) -> Counter:
    return Counter(n.op_type for n in ir.traversal.RecursiveGraphIterator(model.graph))


@pytest.fixture
def apply_pass() -> Callable[..., ir.passes.PassResult]:
    """``apply_pass(pass_, model, feeds=None, *, rtol=1e-5, atol=1e-6) -> PassResult``."""
    return _apply_pass


@pytest.fixture
def op_counts() -> Callable[[ir.Model], Counter]:
    """``op_counts(model) -> Counter`` of op types, subgraphs included."""
    return _op_counts


@pytest.fixture
def checker() -> Callable[[ir.Model], None]:
    """``checker(model)``: the ONNX checker with ``full_check=True``."""
    return check_model

