"""Run a list of passes one by one, optionally verifying the model after each.

The passes themselves are onnx-ir passes (composable with ``ir.passes.PassManager``);
this runner adds what a user needs around them: a report per step, a snapshot so
that a pass that raises leaves the model as it was, and ``verify`` mode, which
runs the checker and compares ONNX Runtime outputs with the previous step's,
stopping with the pass's name when a semantics-preserving pass changed them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import onnx
import onnx_ir as ir

from edgeopt.core.errors import EdgeoptError, VerificationError
from edgeopt.core.pass_base import adopt
from edgeopt.core.runtime import Deviation, Feeds, compare_outputs, random_feeds, run_model
from edgeopt.pipeline import registry

logger = logging.getLogger(__name__)

StepSpec = str | tuple[str, Mapping[str, Any]] | ir.passes.PassBase
"""A registered pass name (or preset), a name with options, or a pass instance."""


@dataclass(frozen=True)
class StepResult:
    """What one pass did."""

    name: str
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    deviation: Deviation | None = None
    """Outputs vs the previous step's (verify mode, when the model runs in ORT)."""
    error: str | None = None
    """Set when the pass raised and the model was rolled back to its state before it."""
    skipped: str | None = None
    """Set when a pass from a preset did not apply to this model (e.g. its opset)."""


@dataclass
class PipelineResult:
    model: ir.Model
    steps: list[StepResult] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(s.modified for s in self.steps)


@dataclass(frozen=True)
class _Step:
    name: str
    pass_: ir.passes.PassBase
    preserves_semantics: bool
    from_preset: bool = False
    group: int = -1
    """Steps of one preset share a group number and repeat until nothing changes."""


PRESET_ROUNDS = 8
"""Most times a preset's passes run in a row; they stop early once a round changes nothing (a raw
export's clean-up settles in two or three)."""


def build_steps(specs: Sequence[StepSpec]) -> list[_Step]:
    steps: list[_Step] = []
    for spec in specs:
        if isinstance(spec, ir.passes.PassBase):
            keep = bool(getattr(spec, "preserves_semantics", True))
            steps.append(_Step(type(spec).__name__, spec, keep))
            continue
        name, options = (spec, {}) if isinstance(spec, str) else spec
        group = len(steps)
        for each, each_options, from_preset in resolve(name, options):
            info = registry.get_pass(each)
            steps.append(_Step(each, info.create(each_options), info.preserves_semantics,
                               from_preset=from_preset, group=group if from_preset else -1))
    return steps


def resolve(
    name: str, options: Mapping[str, Any]
) -> list[tuple[str, Mapping[str, Any], bool]]:
    """``(pass, options, from_preset)`` for a pass or preset name.

    A preset's options are keyed by the passes inside it:
    ``("cleanup", {"fold-constants": {"input_size_limit": 4096}})``.
    """
    names = registry.expand([name])
    if names == [name]:
        return [(name, options, False)]
    unknown = [key for key in options if key not in names]
    if unknown:
        raise registry.PassOptionError(
            f"preset '{name}' has no pass '{unknown[0]}'; its options are keyed by its passes: "
            f"{', '.join(names)}."
        )
    for key, value in options.items():
        if not isinstance(value, Mapping):
            raise registry.PassOptionError(
                f"preset '{name}': options of '{key}' must be a mapping, got {value!r}."
            )
    return [(each, options.get(each, {}), True) for each in names]


class Pipeline:
    """An ordered list of passes with verification and per-step reports.

    Args:
        steps: Pass names (presets expand), ``(name, options)`` pairs or pass instances.
        verify: After each pass, run the checker and compare ONNX Runtime outputs
            with the previous step's on ``feeds``.
        feeds: Sample inputs for ``verify``; random inputs (seed 0) when omitted.
        rtol, atol: Tolerance for semantics-preserving passes.
        on_error: ``"rollback"`` leaves the model as it was when a pass raises
            (the step reports the error); ``"raise"`` propagates the exception.
    """

    def __init__(
        self,
        steps: Sequence[StepSpec],
        *,
        verify: bool = False,
        feeds: Feeds | None = None,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        on_error: Literal["rollback", "raise"] = "rollback",
    ) -> None:
        if on_error not in ("rollback", "raise"):
            raise ValueError(f"on_error must be 'rollback' or 'raise', got {on_error!r}")
        self.steps = build_steps(steps)
        self.verify = verify
        self.feeds = feeds
        self.rtol = rtol
        self.atol = atol
        self.on_error = on_error

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def run(
        self, model: ir.Model, *, on_step: Callable[[StepResult], None] | None = None
    ) -> PipelineResult:
        """Run every step on ``model`` (changed in place unless a step is rolled back)."""
        result = PipelineResult(model)
        feeds, reference = self._reference(model) if self.verify else (None, None)
        checker_ok = self.verify and _checker_error(model) is None
        for group in _groups(self.steps):
            for _ in range(PRESET_ROUNDS if group[0].group >= 0 else 1):
                changed = False
                for step in group:
                    model, report, reference, checker_ok = self._run_step(
                        step, model, feeds, reference, checker_ok
                    )
                    result.model = model
                    result.steps.append(report)
                    changed |= report.modified
                    if on_step is not None:
                        on_step(report)
                if not changed:
                    break
        return result

    def _reference(self, model: ir.Model) -> tuple[Feeds | None, Feeds | None]:
        """This run's feeds (given, else random for this model) and the model's outputs."""
        try:
            feeds = self.feeds if self.feeds is not None else random_feeds(model)
            return feeds, run_model(model, feeds)
        except Exception as e:  # noqa: BLE001 - any ORT failure means "cannot verify"
            logger.warning("verify: the input model does not run in ONNX Runtime (%s); "
                           "only the checker will be run after each pass", _first_line(e))
            return None, None

    def _run_step(
        self,
        step: _Step,
        model: ir.Model,
        feeds: Feeds | None,
        reference: Feeds | None,
        checker_ok: bool,
    ) -> tuple[ir.Model, StepResult, Feeds | None, bool]:
        before = _count_nodes(model)
        snapshot = _snapshot(model) if self.on_error == "rollback" else None
        start = time.perf_counter()
        try:
            pass_result = step.pass_(model)
        except ir.passes.PreconditionError as e:
            cause = e.__cause__ if isinstance(e.__cause__, EdgeoptError) else e
            if not step.from_preset:
                raise cause from None
            logger.info("%s: skipped (%s)", step.name, _first_line(cause))
            report = StepResult(step.name, False, 0.0, before, before, skipped=_first_line(cause))
            return model, report, reference, checker_ok
        except EdgeoptError:
            raise
        except Exception as e:
            if snapshot is None:
                raise
            logger.warning("%s: failed (%s); the model is left as it was", step.name, _first_line(e))
            report = StepResult(step.name, False, time.perf_counter() - start, before, before,
                                error=_first_line(e))
            return snapshot, report, reference, checker_ok
        model = pass_result.model
        seconds = time.perf_counter() - start
        deviation = None
        if self.verify:
            if checker_ok and (err := _checker_error(model)) is not None:
                raise VerificationError(f"pass '{step.name}' produced an invalid model: {err}")
            if reference is not None and feeds is not None:
                try:
                    outputs = run_model(model, feeds)
                except Exception as e:  # noqa: BLE001 - the input ran, so the pass broke it
                    raise VerificationError(
                        f"pass '{step.name}' produced a model ONNX Runtime cannot run: "
                        f"{_first_line(e)}"
                    ) from e
                deviation = compare_outputs(reference, outputs, rtol=self.rtol, atol=self.atol)
                if step.preserves_semantics and not deviation.ok:
                    raise VerificationError(
                        f"pass '{step.name}' changed the model's outputs: "
                        f"{'; '.join(deviation.mismatches)}. Exclude it or report a bug."
                    )
                reference = outputs
        logger.info("%s: %s, %d -> %d nodes in %.2fs", step.name,
                    "modified" if pass_result.modified else "unchanged",
                    before, _count_nodes(model), seconds)
        report = StepResult(step.name, pass_result.modified, seconds, before,
                            _count_nodes(model), deviation)
        return model, report, reference, checker_ok


def _groups(steps: Sequence[_Step]) -> list[list[_Step]]:
    """Consecutive steps of one preset form a group; every other step is its own."""
    groups: list[list[_Step]] = []
    for step in steps:
        if groups and step.group >= 0 and groups[-1][0].group == step.group:
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


class PresetPass(ir.passes.InPlacePass):
    """A preset (e.g. ``cleanup``) as one onnx-ir pass, with the pipeline's semantics:
    passes whose preconditions fail are skipped, a pass that raises is rolled back,
    and the passes repeat until nothing changes."""

    def __init__(self, preset: str) -> None:
        super().__init__()
        self.preset = preset

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = Pipeline([self.preset]).run(model)
        if result.model is not model:  # a rolled-back step returned a snapshot
            adopt(model, result.model)
        return ir.passes.PassResult(model, modified=result.modified)


def cleanup() -> ir.passes.PassBase:
    """The ``cleanup`` preset as one onnx-ir pass (repeated until nothing changes)."""
    return PresetPass("cleanup")


def run_passes(
    model: ir.Model, steps: Sequence[StepSpec], *, verify: bool = False, feeds: Feeds | None = None
) -> PipelineResult:
    """Shorthand for ``Pipeline(steps, verify=verify, feeds=feeds).run(model)``."""
    return Pipeline(steps, verify=verify, feeds=feeds).run(model)


def _snapshot(model: ir.Model) -> ir.Model:
    """A copy to roll back to; ``clone()`` drops ``meta``, which holds the source path."""
    copy = model.clone()
    copy.meta.update(model.meta)
    return copy


def _count_nodes(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def _checker_error(model: ir.Model) -> str | None:
    try:
        onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker failure is reported as text
        return _first_line(e)
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
