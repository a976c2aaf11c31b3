"""Fetch many tensors from ONNX Runtime within a memory budget.

ONNX Runtime runs the whole graph on every call and keeps every graph output
allocated until the call returns, whichever outputs the call asks for: a session
with fifty activations as extra outputs holds all fifty, for the whole batch. So
the tensors are fetched in consecutive groups whose size, estimated from their
shapes (symbolic dims bound by the first batch's feeds), stays within a byte
budget, each group from its own session of only the nodes it needs. A list that
fits is one group, run in the session the caller made for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.core.dead_code import remove_unused
from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.runtime import Feeds, create_session

logger = logging.getLogger(__name__)

FETCH_BYTES = 256 * 2**20
"""Default budget: bytes of fetched tensors one ONNX Runtime call may return (estimated). EfficientNet-Lite0's
50 weight-layer inputs are 407 MB for a batch of 16 images (two groups), all its activations 800 MB (four);
a single tensor larger than the budget is a group of its own."""


class FetchGroups:
    """``names`` of ``work`` (graph outputs of ``session`` if given) fetched a group at a time.

    ``names`` may repeat a name or name a graph input (the caller has it in its
    feeds: never fetched, no cost); groups are consecutive spans of ``names``.
    The groups are planned at the first batch. ``max_bytes=None``: one group.
    """

    def __init__(self, work: ir.Model, names: Sequence[str], *, session: ort.InferenceSession | None = None,
                 max_bytes: int | None = FETCH_BYTES) -> None:
        self._work, self.names, self._session, self._max_bytes = work, list(names), session, max_bytes
        self._groups: list[tuple[range, list[str], ort.InferenceSession]] | None = None

    def spans(self, feeds: Feeds) -> list[range]:
        """The groups as spans of ``names``; ``feeds`` (the first batch's) bind the symbolic dims."""
        if self._groups is None:
            self._groups = self._plan(feeds)
        return [span for span, _, _ in self._groups]

    def run(self, index: int, feeds: Feeds) -> dict[str, np.ndarray]:
        """Fetch group ``index`` (of :meth:`spans`): name -> array, graph inputs left out."""
        assert self._groups is not None, "spans() plans the groups first"
        _, names, session = self._groups[index]
        return dict(zip(names, session.run(names, feeds), strict=True)) if names else {}

    def _plan(self, feeds: Feeds) -> list[tuple[range, list[str], ort.InferenceSession]]:
        inputs = {v.name for v in self._work.graph.inputs}
        sizes = estimated_bytes(self._work, [n for n in self.names if n not in inputs], feeds)
        spans = _split(self.names, sizes, self._max_bytes)
        groups = [(span, list(dict.fromkeys(n for n in self.names[span.start:span.stop] if n in sizes)))
                  for span in spans]
        if len(groups) == 1 and self._session is not None:
            return [(groups[0][0], groups[0][1], self._session)]
        logger.debug("fetch: %d tensor(s), %.0f MB, in %d group(s) of at most %.0f MB", len(sizes),
                     sum(sizes.values()) / 2**20, len(groups), (self._max_bytes or 0) / 2**20)
        self._session = None  # not run again: free it
        return [(span, names, self._part(names)) for span, names in groups]

    def _part(self, names: list[str]) -> ort.InferenceSession:
        """A session of the nodes ``names`` need, with exactly those outputs."""
        part = self._work.clone()
        values = {v.name: v for node in part.graph for v in node.outputs}
        part.graph.outputs.clear()
        part.graph.outputs.extend(values[name] for name in names if name in values)  # ORT names the others
        remove_unused(part)
        try:
            return create_session(part, low_memory=True)
        except Exception as e:
            raise CalibrationDataError(f"ONNX Runtime cannot load the model to calibrate: {e}") from e


def estimated_bytes(work: ir.Model, names: Sequence[str], feeds: Feeds) -> dict[str, int]:
    """Bytes of each named node output for ``feeds``, from its shape and type.

    Symbolic dims take their size from the graph inputs' dims in ``feeds``;
    others count as 1. A value without a shape or a sized type counts as the
    largest known one (0 when none is known).
    """
    dims: dict[str, int] = {}
    for graph_input in work.graph.inputs:
        if graph_input.shape is not None and graph_input.name in feeds:
            for dim, size in zip(graph_input.shape, np.shape(feeds[graph_input.name]), strict=False):
                if isinstance(dim, ir.SymbolicDim) and dim.value is not None:
                    dims[dim.value] = int(size)
    values = {v.name: v for node in work.graph for v in node.outputs}
    known: dict[str, int] = {}
    for name in names:
        value = values.get(name)
        if value is None or value.shape is None or value.dtype is None:
            continue
        try:
            itemsize = value.dtype.itemsize
        except TypeError:  # strings, undefined
            continue
        count = 1
        for dim in value.shape:
            count *= dim if isinstance(dim, int) else dims.get(dim.value or "", 1)
        known[name] = int(count * itemsize)
    largest = max(known.values(), default=0)
    return {name: known.get(name, largest) for name in names}


def _split(names: list[str], sizes: dict[str, int], budget: int | None) -> list[range]:
    """Consecutive spans of ``names`` whose distinct ``sizes`` add up to at most ``budget`` (or one name)."""
    if budget is None:
        return [range(len(names))]
    spans: list[range] = []
    start, total, held = 0, 0, set[str]()
    for i, name in enumerate(names):
        if name in held or name not in sizes:
            continue
        if held and total + sizes[name] > budget:
            spans.append(range(start, i))
            start, total, held = i, 0, set()
        held.add(name)
        total += sizes[name]
    spans.append(range(start, len(names)))
    return spans
