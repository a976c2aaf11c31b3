"""Drop residual blocks or whole transformer layers from the graph.

A block found by :func:`edgeopt.blocks.residual.find_blocks` spans ``start -> end``;
dropping it makes every use of ``end`` read ``start`` (a graph output keeps its
name), then ``remove-unused`` deletes the nodes and weights nothing uses any more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Literal

import onnx_ir as ir

from edgeopt.blocks import residual as residual_blocks
from edgeopt.blocks.bypass import DROPPED_KEY, drop_blocks
from edgeopt.blocks.refit import repair
from edgeopt.blocks.scoring import greedy_pick, score_blocks
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.runtime import Feeds
from edgeopt.data.readers import batches, open_reader

logger = logging.getLogger(__name__)

class DropLayersPass(EdgeoptPass):
    """Drop transformer layers or residual blocks, named or chosen on calibration data.

    Graph input and output names are kept. Only the top-level graph is searched.

    Args:
        blocks: Names from ``edgeopt drop-layers MODEL --plan`` (``layer3``, ``block5``),
            numbered on the model as given to this pass.
        count: Instead of ``blocks``: drop this many, those whose bypass changes the
            output least on ``calibration`` (scored one by one).
        granularity: ``"layer"`` (transformer layer / residual block with its trailing
            norm) or ``"block"`` (each ``x + f(x)`` alone: attention and FFN separately).
        calibration: Sample data (a re-iterable of feeds, or a path/spec for
            :func:`edgeopt.data.readers.open_reader`); needed by ``count`` and ``repair``.
        output: The graph output that scoring compares (default: the first).
        rescore: With ``count``: pick greedily, re-scoring this many of the best remaining
            blocks after each pick with the picks so far dropped (0: rank once; see
            :func:`edgeopt.blocks.scoring.greedy_pick`).
        repair: Refit the projections right after each dropped block by least squares
            so that they reproduce the original model's (see :mod:`edgeopt.blocks.refit`).
        samples: Use at most this many calibration samples.
        batch_size: Re-batch the calibration data to this size.
        on_block: Called with the number of blocks scored so far (progress bars).
    """

    name = "drop-layers"
    preserves_semantics = False
    path_options: ClassVar[tuple[str, ...]] = ("calibration",)

    def __init__(
        self,
        *,
        blocks: tuple[str, ...] = (),
        count: int = 0,
        granularity: Literal["layer", "block"] = "layer",
        calibration: str | Iterable[Feeds] | None = None,
        output: str | None = None,
        rescore: int = 0,
        repair: bool = False,
        samples: int | None = None,
        batch_size: int | None = None,
        on_block: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        if bool(blocks) == bool(count):
            raise PassOptionError("drop-layers: give either blocks (names from --plan) or count, not both.")
        if (count or repair) and calibration is None:
            raise CalibrationDataError("drop-layers: count and repair need calibration data (--calib DATA).")
        self.blocks = tuple(blocks)
        self.count = count
        self.granularity = granularity
        self.calibration = calibration
        if rescore < 0 or (rescore and not count):
            raise PassOptionError(f"drop-layers: rescore {rescore} needs count and must be 0 or more.")
        self.output = output
        self.rescore = rescore
        self.repair = repair
        self.samples = samples
        self.batch_size = batch_size
        self.on_block = on_block

    def _request(self) -> str:
        what = ",".join(self.blocks) if self.blocks else f"count={self.count}"
        what += f" rescore={self.rescore}" if self.rescore else ""
        return f"{self.granularity}:{what}{' repaired' if self.repair else ''}"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if model.metadata_props.get(DROPPED_KEY, "").startswith(self._request() + " -> "):
            return ir.passes.PassResult(model, modified=False)
        found = {b.name: b for b in residual_blocks.find_blocks(model, self.granularity)}
        chosen = self._choose(model, found)
        original = model.clone() if self.repair else None
        drop_blocks(model, chosen)
        if original is not None:
            repair(original, model, chosen, self._data(original))
        model.metadata_props[DROPPED_KEY] = f"{self._request()} -> {','.join(b.name for b in chosen)}"
        logger.info("drop-layers: dropped %d %s(s): %s", len(chosen), self.granularity,
                    ", ".join(b.name for b in chosen))
        return ir.passes.PassResult(model, modified=bool(chosen))

    def _choose(self, model: ir.Model, found: dict[str, residual_blocks.Block]) -> list[residual_blocks.Block]:
        if self.blocks:
            unknown = [name for name in self.blocks if name not in found]
            if unknown:
                raise PassOptionError(f"drop-layers: no {unknown[0]} in this model (it has "
                                      f"{', '.join(found) or 'no droppable blocks'}). See edgeopt drop-layers --plan.")
            return [found[name] for name in found if name in self.blocks]

        data = self._data(model)
        ranked = score_blocks(model, list(found.values()), data, output=self.output, on_block=self.on_block)
        if len(ranked) < self.count:
            raise PassOptionError(f"drop-layers: count {self.count} but only {len(ranked)} {self.granularity}(s) "
                                  "can be dropped. Lower the count.")
        if self.rescore and self.count > 1:
            ranked = greedy_pick(model, list(found.values()), ranked, data, self.count, width=self.rescore,
                                 output=self.output)
        names = {s.name for s in ranked[: self.count]}
        return [b for b in found.values() if b.name in names]

    def _data(self, model: ir.Model) -> Callable[[], Iterator[Feeds]]:
        assert self.calibration is not None
        reader = open_reader(self.calibration, model) if isinstance(self.calibration, str) else self.calibration
        return lambda: batches(reader, model, batch_size=self.batch_size, limit=self.samples)
