"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import onnx_ir as ir
import pytest

from edgeopt import passes

RegisterPasses = Callable[..., None]


@pytest.fixture
def register_passes(monkeypatch: pytest.MonkeyPatch) -> RegisterPasses:
    """Add test-only passes and presets to the registry for one test.

    Call it as ``register_passes({"my-pass": MyPass}, presets={"my-preset": ("my-pass",)})``;
    the registry's dicts are restored when the test ends.
    """

    def register(
        new_passes: Mapping[str, type[ir.passes.PassBase]],
        presets: Mapping[str, tuple[str, ...]] | None = None,
    ) -> None:
        for name, cls in new_passes.items():
            monkeypatch.setitem(passes.PASSES, name, cls)
        for name, members in (presets or {}).items():
            monkeypatch.setitem(passes.PRESETS, name, members)

    return register
