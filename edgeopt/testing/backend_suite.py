"""Score a model transform on the ONNX backend conformance models.

A transform passes a case when its result still passes the checker (if the
original did), loads in ONNX Runtime, and gives the original model's ONNX
Runtime outputs on the case's inputs: same output names in the same order, same
structure (sequences, optionals, maps), dtypes and shapes, and values within
tolerance. Outputs are compared with the original model's, not with the
expected outputs shipped with the case, so ORT's own deviations don't count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import onnx
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import compare_outputs, create_session
from edgeopt.testing.backend_cases import BackendCase, collect_cases, node_cases_dir

__all__ = [
    "BackendCase",
    "CaseOutcome",
    "Status",
    "check_case",
    "cleanup_transform",
    "collect_cases",
    "compare_structured",
    "node_cases_dir",
]

logger = logging.getLogger(__name__)

Status = Literal["ok", "broken", "crashed", "not-runnable"]
Transform = Callable[[ir.Model], ir.Model]
Outputs = dict[str, Any]
"""Output name -> what ORT returned: an array, a list (sequence), a dict (map) or None."""


@dataclass(frozen=True)
class CaseOutcome:
    name: str
    status: Status
    detail: str = ""
    """One line: why the case is not ok (empty when it is)."""
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    """Nodes (subgraphs included) before and after the transform, for ok cases."""


def cleanup_transform(model: ir.Model) -> ir.Model:
    """The ``cleanup`` preset, raising instead of rolling back a failing pass."""
    from edgeopt.pipeline.runner import Pipeline

    return Pipeline(["cleanup"], on_error="raise").run(model).model


def check_case(
    case: BackendCase, transform: Transform, *, rtol: float = 1e-3, atol: float = 1e-4
) -> CaseOutcome:
    """Run ``transform`` on ``case``'s model and judge the result (see the module doc)."""
    start = time.perf_counter()
    counts: list[int] = []
    status, detail = _check(case, transform, rtol, atol, counts)
    before, after = counts if len(counts) == 2 else (0, 0)
    return CaseOutcome(case.name, status, _one_line(detail), time.perf_counter() - start,
                       before, after)


def _check(
    case: BackendCase, transform: Transform, rtol: float, atol: float, counts: list[int]
) -> tuple[Status, str]:
    try:
        feed_sets = list(case.input_sets())
        session = create_session(case.model_path)
        references = [_run(session, feeds) for feeds in feed_sets]
    except Exception as e:  # noqa: BLE001 - whatever ORT refuses is out of scope
        return "not-runnable", f"original: {_error(e)}"
    original_checks = _checker_error(onnx.load(str(case.model_path))) is None
    try:
        model = load_model(case.model_path)
    except Exception as e:  # noqa: BLE001
        return "crashed", f"load_model: {_error(e)}"
    before = _count_nodes(model)
    try:
        result = transform(model)
    except Exception as e:  # noqa: BLE001 - counting these is the point
        return "crashed", f"transform: {_error(e)}"
    counts[:] = [before, _count_nodes(result)]
    try:
        proto = ir.serde.serialize_model(result)
        proto.SerializeToString()
    except Exception as e:  # noqa: BLE001
        return "crashed", f"serialize: {_error(e)}"
    if original_checks and (err := _checker_error(proto)) is not None:
        return "broken", f"checker: {err}"
    try:
        session = create_session(proto)
    except Exception as e:  # noqa: BLE001
        return "broken", f"ORT load: {_error(e)}"
    for index, (feeds, reference) in enumerate(zip(feed_sets, references, strict=True)):
        try:
            actual = _run(session, feeds)
        except Exception as e:  # noqa: BLE001
            return "broken", f"ORT run (data set {index}): {_error(e)}"
        mismatches = compare_structured(reference, actual, rtol=rtol, atol=atol)
        if mismatches:
            return "broken", f"data set {index}: {'; '.join(mismatches)}"
    return "ok", ""


def _count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def compare_structured(
    reference: Mapping[str, Any], actual: Mapping[str, Any], *, rtol: float, atol: float
) -> list[str]:
    """Mismatches between two sets of ORT outputs, which may hold sequences (lists),
    maps (dicts) and absent optionals (None) as well as arrays."""
    if list(reference) != list(actual):
        return [f"output names {list(actual)} != {list(reference)}"]
    return list(compare_outputs(reference, actual, rtol=rtol, atol=atol).mismatches)


def _run(session: ort.InferenceSession, feeds: Mapping[str, Any]) -> Outputs:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def _checker_error(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker failure is reported as text
        return _error(e)
    return None


def _error(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
