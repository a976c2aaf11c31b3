"""The base class of edgeopt's passes: a registry name and an opset range."""

from __future__ import annotations

from typing import ClassVar

import onnx_ir as ir

from edgeopt.core.errors import UnsupportedOpsetError
from edgeopt.core.model_io import SOURCE_PATH_KEY


class EdgeoptPass(ir.passes.InPlacePass):
    """An in-place onnx-ir pass with a registry name and the opsets it supports.

    Subclasses set ``name`` (kebab-case registry key) and, when their logic
    depends on the opset, ``min_opset`` / ``max_opset`` for the default domain;
    ``requires()`` then refuses a model outside that range. Passes whose job is
    to change outputs (quantization, pruning) set ``preserves_semantics = False``
    so that ``--verify`` reports their deviation instead of stopping.
    """

    name: ClassVar[str]
    min_opset: ClassVar[int | None] = None
    max_opset: ClassVar[int | None] = None
    preserves_semantics: ClassVar[bool] = True

    def requires(self, model: ir.Model) -> None:
        if self.min_opset is None and self.max_opset is None:
            return
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx"))
        where = model.meta.get(SOURCE_PATH_KEY) or model.graph.name or "model"
        if opset is None:
            raise UnsupportedOpsetError(
                f"{where}: imports no default-domain opset; pass '{self.name}' needs one. "
                "Add an opset import (e.g. onnx.helper.make_opsetid('', 17))."
            )
        if self.min_opset is not None and opset < self.min_opset:
            raise UnsupportedOpsetError(
                f"{where}: opset {opset} is below {self.min_opset}, the minimum for pass "
                f"'{self.name}'. Convert first: edgeopt convert-opset MODEL -o OUT --to 17"
            )
        if self.max_opset is not None and opset > self.max_opset:
            raise UnsupportedOpsetError(
                f"{where}: opset {opset} is above {self.max_opset}, the maximum for pass "
                f"'{self.name}'. Convert first: edgeopt convert-opset MODEL -o OUT "
                f"--to {self.max_opset}"
            )


def adopt(model: ir.Model, other: ir.Model) -> None:
    """Make ``model`` hold ``other``'s graph, functions and versions, in place.

    For passes built on tools that return a new model (ORT's quantizers), so that
    the pass can still be in place; ``model.meta`` (e.g. the source path) is kept.
    """
    model.graph = other.graph
    model.ir_version = other.ir_version
    model.functions.clear()
    model.functions.update(other.functions)
