"""Tests for edgeopt.pipeline.registry: lookup, suggestions, typed options and presets.

The passes here are test-only; ``register_passes`` puts them in the registry for one test.
"""

from __future__ import annotations

import re
from typing import Literal

import onnx_ir as ir
import pytest

from edgeopt.core.errors import PassOptionError
from edgeopt.pipeline import registry


class ScaleWeightsPass(ir.passes.InPlacePass):
    """Multiply float initializers by a factor (test-only).

    The second line of the docstring is not part of the summary.
    """

    def __init__(
        self,
        *,
        factor: float = 1.0,
        repeat: int = 1,
        enabled: bool = True,
        mode: Literal["fast", "exact"] = "fast",
        level: Literal[1, 2] = 1,
        skip: tuple[str, ...] = (),
        label: str = "",
        limit: int | None = None,
    ) -> None:
        super().__init__()
        self.factor = factor
        self.repeat = repeat
        self.enabled = enabled
        self.mode = mode
        self.level = level
        self.skip = skip
        self.label = label
        self.limit = limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


class NoOptionsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


class LossyPass(NoOptionsPass):
    """Changes outputs on purpose (test-only)."""

    preserves_semantics = False


@pytest.fixture(autouse=True)
def _test_passes(register_passes) -> None:
    register_passes(
        {"scale-weights": ScaleWeightsPass, "no-options": NoOptionsPass, "lossy": LossyPass},
        presets={"test-cleanup": ("no-options", "scale-weights")},
    )


def test_list_passes_sorted_and_includes_registered() -> None:
    names = [info.name for info in registry.list_passes()]

    assert names == sorted(names)
    assert {"scale-weights", "no-options", "lossy"} <= set(names)
    assert registry.list_presets()["test-cleanup"] == ("no-options", "scale-weights")


def test_get_pass_info() -> None:
    info = registry.get_pass("scale-weights")

    assert info.cls is ScaleWeightsPass
    assert info.summary == "Multiply float initializers by a factor (test-only)."
    assert info.preserves_semantics
    assert not registry.get_pass("lossy").preserves_semantics
    assert registry.get_pass("no-options").summary == ""


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("scale-weight", "'scale-weights'"), ("lossi", "'lossy'"), ("test-clenup", "'test-cleanup'")],
)
def test_unknown_pass_suggests_close_match(name: str, suggestion: str) -> None:
    expected = f"unknown pass '{name}' (did you mean {suggestion}"

    with pytest.raises(PassOptionError, match=re.escape(expected) + ".*edgeopt list-passes"):
        registry.get_pass(name)


def test_unknown_pass_without_close_match() -> None:
    with pytest.raises(PassOptionError, match="unknown pass 'xyzzy'") as info:
        registry.get_pass("xyzzy")
    assert "did you mean" not in str(info.value)


def test_options_describe_signature() -> None:
    options = registry.get_pass("scale-weights").options()

    assert list(options) == [
        "factor", "repeat", "enabled", "mode", "level", "skip", "label", "limit"
    ]
    assert {name: o.type_name for name, o in options.items()} == {
        "factor": "float",
        "repeat": "int",
        "enabled": "bool",
        "mode": "'fast' | 'exact'",
        "level": "1 | 2",
        "skip": "tuple[str, ...]",
        "label": "str",
        "limit": "int | None",
    }
    assert options["factor"].default == 1.0
    assert options["limit"].default is None
    assert registry.get_pass("no-options").options() == {}


def test_create_with_valid_options() -> None:
    info = registry.get_pass("scale-weights")

    instance = info.create(
        {"factor": 2, "repeat": 3, "enabled": False, "mode": "exact", "level": 2,
         "skip": ["a", "b"], "label": "x", "limit": None}
    )

    assert isinstance(instance, ScaleWeightsPass)
    assert instance.factor == 2.0 and type(instance.factor) is float  # int accepted for float
    assert instance.repeat == 3
    assert instance.enabled is False
    assert instance.mode == "exact"
    assert instance.level == 2
    assert instance.skip == ("a", "b")  # a YAML/JSON list becomes the annotated tuple
    assert instance.label == "x"
    assert instance.limit is None
    assert info.create({"limit": 5}).limit == 5
    defaults = info.create()
    assert (defaults.factor, defaults.repeat, defaults.skip) == (1.0, 1, ())


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("repeat", "3", "int"),
        ("repeat", True, "int"),  # bool is an int subclass, but not an int option
        ("repeat", 2.5, "int"),
        ("factor", "2.0", "float"),
        ("factor", False, "float"),
        ("enabled", 1, "bool"),
        ("mode", "slow", "'fast' | 'exact'"),
        ("level", True, "1 | 2"),  # True == 1, but it is not one of the choices
        ("level", 1.0, "1 | 2"),
        ("skip", "a", "tuple[str, ...]"),  # a bare string is not a list of names
        ("skip", ["a", 1], "tuple[str, ...]"),
        ("label", 3, "str"),
        ("limit", 1.5, "int | None"),
    ],
)
def test_wrong_option_type_names_pass_option_and_type(option: str, value, expected: str) -> None:
    message = f"pass 'scale-weights' option '{option}' expects {expected}, got {value!r}"

    with pytest.raises(PassOptionError, match=re.escape(message)):
        registry.get_pass("scale-weights").create({option: value})


def test_unknown_option_suggests_and_lists_options() -> None:
    expected = (
        "pass 'scale-weights' has no option 'factr' (did you mean 'factor'?). "
        "Its options: factor, repeat, enabled, mode, level, skip, label, limit."
    )

    with pytest.raises(PassOptionError, match=re.escape(expected)):
        registry.get_pass("scale-weights").create({"factr": 2.0})
    with pytest.raises(PassOptionError, match=re.escape("Its options: none.")):
        registry.get_pass("no-options").create({"factor": 2.0})


def test_expand_presets() -> None:
    assert registry.expand(["test-cleanup", "lossy"]) == ["no-options", "scale-weights", "lossy"]
    assert registry.expand(["lossy", "lossy"]) == ["lossy", "lossy"]
    assert registry.expand([]) == []


def test_expand_rejects_unknown_name() -> None:
    with pytest.raises(PassOptionError, match="unknown pass 'scale-weighs'.*'scale-weights'"):
        registry.expand(["test-cleanup", "scale-weighs"])
