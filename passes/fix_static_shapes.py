"""Give every dynamic input dimension a fixed size, then propagate the sizes.

NPUs (QNN HTP, NNAPI, TFLite's full-integer path) compile a graph for one set of
shapes: a symbolic batch or sequence dimension keeps the whole graph off the
accelerator. This pass fixes each symbolic (or unknown) dimension of the graph
inputs, writes the same size wherever that symbolic name appears in the graph,
and re-runs shape inference and constant folding so that ``Shape``-derived
arithmetic becomes constant and intermediate shapes become concrete.

A sequence-length cap (``max_sequence_length``) is the token-level compression
for transformer inputs: every non-batch dynamic dimension becomes that length.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.passes.fold_constants import FoldConstantsPass
from edgeopt.passes.infer_shapes import InferShapesPass
from edgeopt.passes.remove_unused import RemoveUnusedPass

logger = logging.getLogger(__name__)


class FixStaticShapesPass(EdgeoptPass):
    """Replace every dynamic dimension of the graph inputs by a fixed size.

    A dimension's size comes from ``dims`` (by its symbolic name, e.g. ``batch``),
    else ``batch_size`` for axis 0, else ``max_sequence_length`` for any other
    axis; a dynamic dimension none of these covers is an error naming it (or,
    with ``strict=False``, stays dynamic, logged at INFO). The
    same symbolic name is replaced everywhere in the graph (ONNX gives one name
    one size), then shapes are inferred and ``Shape`` arithmetic is folded.
    Dimensions that stay dynamic after that (data-dependent ones, e.g. after
    ``NonZero``) are logged at WARNING. Graph input and output names are kept.
    Subgraph values are renamed too; model-local functions are not visited.

    Args:
        dims: Size per symbolic dimension name, e.g. ``{"batch": 1, "seq": 128}``.
        batch_size: Size of a dynamic axis 0 not named in ``dims``.
        max_sequence_length: Size of any other dynamic axis not named in ``dims``
            (the sequence length of transformer inputs).
        strict: Refuse a dynamic dimension that gets no size (else leave it dynamic).
    """

    name = "fix-static-shapes"

    def __init__(
        self,
        *,
        dims: Mapping[str, int] | None = None,
        batch_size: int = 1,
        max_sequence_length: int | None = None,
        strict: bool = True,
    ) -> None:
        super().__init__()
        sizes = {"batch_size": batch_size, "max_sequence_length": max_sequence_length or 1,
                 **{f"dims.{k}": v for k, v in (dims or {}).items()}}
        bad = [f"{k}={v!r}" for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if bad:
            raise PassOptionError(f"fix-static-shapes: sizes must be positive integers, got {', '.join(bad)}.")
        self.dims = dict(dims or {})
        self.batch_size = batch_size
        self.max_sequence_length = max_sequence_length
        self.strict = strict

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        named, fixed = self._fix_inputs(model)
        if not fixed:
            return ir.passes.PassResult(model, modified=False)
        for graph in model.graphs():
            for value in _values(graph):
                if value.shape is not None and any(str(d) in named for d in _symbolic(value.shape)):
                    value.shape = ir.Shape([named.get(str(d), d) if not isinstance(d, int) else d
                                            for d in value.shape])
        ir.passes.PassManager([InferShapesPass(), FoldConstantsPass(), RemoveUnusedPass(), InferShapesPass()],
                              steps=1)(model)
        left = sorted({value.name or "?" for graph in model.graphs() for value in _values(graph)
                       if value.shape is not None and _symbolic(value.shape)})
        if left and dynamic_dims(model):
            logger.info("fix-static-shapes: %d value(s) keep dynamic dims that follow the dynamic inputs", len(left))
        elif left:
            logger.warning("fix-static-shapes: %d value(s) still have dynamic dims (data-dependent): %s",
                           len(left), ", ".join(left[:5]))
        logger.info("fix-static-shapes: fixed %d input dim(s)", fixed)
        return ir.passes.PassResult(model, modified=True)

    def _fix_inputs(self, model: ir.Model) -> tuple[dict[str, int], int]:
        named: dict[str, int] = {}
        fixed = 0
        for value in model.graph.inputs:
            if value.is_initializer() or value.shape is None:
                continue
            dims: list[int | ir.SymbolicDim] = []
            for axis, dim in enumerate(value.shape):
                if isinstance(dim, int):
                    dims.append(dim)
                    continue
                size = self._size(value.name or "?", axis, dim)
                if size is None:
                    logger.info("fix-static-shapes: input '%s' axis %d ('%s') stays dynamic: no size given",
                                value.name, axis, dim.value)
                    dims.append(dim)
                    continue
                if dim.value is not None:
                    named[dim.value] = size
                dims.append(size)
                fixed += 1
            value.shape = ir.Shape(dims)
        return named, fixed

    def _size(self, input_name: str, axis: int, dim: ir.SymbolicDim) -> int | None:
        if dim.value is not None and dim.value in self.dims:
            return self.dims[dim.value]
        if axis == 0:
            return self.batch_size
        if self.max_sequence_length is not None:
            return self.max_sequence_length
        if not self.strict:
            return None
        label = f"'{dim.value}'" if dim.value is not None else "unnamed"
        raise PassOptionError(
            f"fix-static-shapes: input '{input_name}' axis {axis} ({label}) is dynamic and has no size. "
            f"Give one: -O fix-static-shapes.dims={{{dim.value or 'NAME'}: SIZE}} "
            "or -O fix-static-shapes.max_sequence_length=SIZE."
        )


def dynamic_dims(model: ir.Model) -> list[tuple[str, int, str]]:
    """``(input name, axis, dim name)`` for every dynamic dimension of the graph inputs."""
    return [(value.name or "?", axis, str(dim.value) if dim.value is not None else "?")
            for value in model.graph.inputs if not value.is_initializer() and value.shape is not None
            for axis, dim in enumerate(value.shape) if not isinstance(dim, int)]


def _symbolic(shape: ir.Shape) -> list[ir.SymbolicDim]:
    return [d for d in shape if not isinstance(d, int)]


def _values(graph: ir.Graph) -> list[ir.Value]:
    values = list(graph.inputs) + list(graph.outputs)
    values += [out for node in graph for out in node.outputs]
    return values
