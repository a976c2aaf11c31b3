"""The search space: searchable options, stages (one road each) and how a trial samples them.

A :class:`Stage` declares which options of its road are searchable
(:class:`Searchable`: a float or int range, or a set of choices) and how to run
the road on a model file; its *switch* is the first option, and one of the
switch's values turns the stage off. The search itself knows no road: it asks
each stage for its options in order (:func:`suggest`) and runs the ones that are on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import onnx_ir as ir

from edgeopt.core.errors import PassOptionError

Kind = Literal["float", "int", "choice"]
Options = dict[str, Any]
Candidate = tuple[tuple[str, Options], ...]
"""The stages that are on, in order, each with its options (the switch included)."""


@dataclass(frozen=True)
class Searchable:
    """One searchable option of a road.

    Args:
        name: The road's option name (a field of its config or a keyword of its function).
        kind: ``float`` / ``int`` (``low`` to ``high``, inclusive) or ``choice`` (``choices``).
        log: Sample a float or int range on a log scale.
        when: Sample this option only when the stage's switch has one of these values
            (empty: whenever the stage is on); otherwise the road's default applies.
    """

    name: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False
    when: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"searchable '{self.name}': a choice needs choices")
        if self.kind != "choice" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"searchable '{self.name}': a {self.kind} range needs low <= high")


class Trial(Protocol):
    """The part of ``optuna.trial.Trial`` a space samples through (duck-typed: optuna stays lazy)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Context:
    """What every stage run may read: the calibration data spec, the sample budget and the search's input model
    (a training stage's teacher)."""

    calibration: str
    samples: int = 128
    original: Path | None = None


Runner = Callable[[Path, Path, Options, Context], dict[str, Any]]
"""(input model, output model, options, context) -> notes for the trial table."""


@dataclass(frozen=True)
class Stage:
    """One road in the search: its switch, its searchable options, its runner and its seed.

    Args:
        name: The stage's name (``prune``, ``quantize``, ...); parameters are ``name`` (the switch)
            and ``name.option``.
        switch: Chooses the stage's variant; ``off`` among its values turns the stage off.
        options: Further searchable options, sampled when the stage is on.
        run: Runs the road on a model file.
        seed: A moderate setting tried alone among the first trials (switch and options).
        road: The road's config class or function whose keywords the options name (checked in tests).
        adapt: Fits the declarations to a model (say, the number of droppable layers); None drops
            the stage for that model.
        keeps_macs: Count the candidate's MACs on the model before this stage.
        more_seeds: Further settings tried alone among the first trials, after every stage's ``seed``.
        refuse: Why a candidate that holds this stage cannot run (an order that makes no sense), or None;
            asked before any stage runs, so such a candidate fails at once with that reason.
        recovers: The stage can give accuracy back (training): a candidate is not stopped early before it.
        combo_seeds: Combinations tried among the first trials, after the single-stage seeds: each maps
            stage names to their settings (switch and options); one naming a stage the search leaves
            out, or a value outside a fitted range, is skipped.
    """

    name: str
    switch: Searchable
    off: Any
    run: Runner
    options: tuple[Searchable, ...] = ()
    seed: Mapping[str, Any] = field(default_factory=dict)
    road: Callable[..., Any] | None = None
    adapt: Callable[[Stage, ir.Model], Stage | None] | None = None
    keeps_macs: bool = False
    """The stage changes how operations run, not how many (quantization): MACs are counted before it."""
    more_seeds: tuple[Mapping[str, Any], ...] = ()
    refuse: Callable[[Candidate], str | None] | None = None
    recovers: bool = False
    combo_seeds: tuple[Mapping[str, Mapping[str, Any]], ...] = ()

    def for_model(self, model: ir.Model) -> Stage | None:
        return self if self.adapt is None else self.adapt(self, model)

    def with_switch(self, switch: Searchable) -> Stage:
        return replace(self, switch=switch)


def select(stages: Sequence[Stage], names: Sequence[str], model: ir.Model) -> list[Stage]:
    """The ``names`` stages (all when empty) fitted to ``model``, in the fixed order of ``stages``."""
    known = [s.name for s in stages]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PassOptionError(f"search: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(known)}.")
    chosen = [s for s in stages if not names or s.name in names]
    fitted = [f for s in chosen if (f := s.for_model(model)) is not None]
    if not fitted:
        raise PassOptionError(f"search: none of the stages {', '.join(s.name for s in chosen)} applies to this "
                              f"model; choose others with --stages {','.join(known)}.")
    return fitted


def suggest(trial: Trial, stages: Sequence[Stage]) -> Candidate:
    """Sample one candidate: each stage's switch, then (when it is on) its options."""
    chosen = []
    for stage in stages:
        value = _suggest(trial, stage.name, stage.switch)
        if value == stage.off:
            continue
        options: Options = {stage.switch.name: value}
        for option in stage.options:
            if not option.when or value in option.when:
                options[option.name] = _suggest(trial, f"{stage.name}.{option.name}", option)
        chosen.append((stage.name, options))
    return tuple(chosen)


def _suggest(trial: Trial, name: str, option: Searchable) -> Any:
    if option.kind == "choice":
        return trial.suggest_categorical(name, list(option.choices))
    assert option.low is not None and option.high is not None
    if option.kind == "int":
        return trial.suggest_int(name, int(option.low), int(option.high), log=option.log)
    return trial.suggest_float(name, float(option.low), float(option.high), log=option.log)


def seeds(stages: Sequence[Stage], first: str = "quantize") -> list[dict[str, Any]]:
    """Known-good starting points, as Optuna parameters: each stage alone at its seed setting
    (``first`` first), every other stage off; then the stages' further seeds (``more_seeds``)."""
    return [params for _, params in seed_points(stages, first)]


def seed_points(stages: Sequence[Stage], first: str = "quantize") -> list[tuple[str, dict[str, Any]]]:
    """:func:`seeds` with the name of the stage each point tries alone (``a+b+c`` for a combination)."""
    ordered = sorted((s for s in stages if s.seed), key=lambda s: s.name != first)
    settings = [{s.name: s.seed} for s in ordered] + [{s.name: more} for s in ordered for more in s.more_seeds]
    settings += [dict(combo) for s in stages for combo in s.combo_seeds]
    by_name = {s.name: s for s in stages}
    points = []
    for setting in settings:
        if not all(name in by_name and _fits(by_name[name], values) for name, values in setting.items()):
            continue
        params: dict[str, Any] = {s.name: s.off for s in stages}
        for name, values in setting.items():
            stage = by_name[name]
            for key, value in values.items():
                params[stage.name if key == stage.switch.name else f"{stage.name}.{key}"] = value
        points.append(("+".join(n for n in by_name if n in setting), params))
    return points


def _fits(stage: Stage, values: Mapping[str, Any]) -> bool:
    """Whether a seed's switch value is one the (fitted) stage can take."""
    value, switch = values.get(stage.switch.name), stage.switch
    if switch.kind == "choice":
        return value in switch.choices
    assert switch.low is not None and switch.high is not None
    return value is not None and switch.low <= value <= switch.high


def describe(candidate: Candidate) -> str:
    """``prune(ratio=0.3, criterion=l1) -> quantize(mode=static)``; ``original`` when nothing is on."""
    if not candidate:
        return "original"
    return " -> ".join(f"{name}({', '.join(f'{k}={_short(v)}' for k, v in options.items())})"
                       for name, options in candidate)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else str(value)
