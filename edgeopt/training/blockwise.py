"""Block-wise reconstruction: train each block of the student to reproduce the teacher's block output.

Before end-to-end distillation (``--blockwise SECONDS``), the student is cut into blocks
at tensors it shares with the teacher (by name, :mod:`edgeopt.training.features`; a pruned
tensor is compared on the teacher channels it kept) where the graph narrows to that one
tensor: nothing else computed before it is read after it (the end of a residual block,
a layer of a plain chain). Consecutive cuts merge until a block holds ``min_layers``
weighted layers (Conv/Gemm/MatMul weights), so an MBConv block or a stem is one block.

Blocks train in order, each on its own (BRECQ, Li et al. 2021; "mimicking then
replacing", Wang et al. 2022): its input is what the student's blocks before it, already
trained, compute from the samples, so errors upstream get corrected rather than
accumulated, and its target is the teacher's tensor at the block's end, with a mean
squared error relative to the target's mean square (the last block: the distillation
objective on the output). A block's forward and backward pass is a fraction of the whole
network's and needs no teacher run, so each block gets many more updates in the time.
The teacher runs once over the samples (all cuts at once); inputs and targets of up to
``max_bytes`` worth of samples are kept in memory (float16), the rest are not used.
Each block gets a share of the time in proportion to the cost of its forward pass, so
every block makes about as many steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
import torch

from edgeopt.core.runtime import Feeds, create_session
from edgeopt.training.features import match_channels, shared_features, with_outputs
from edgeopt.training.interpreter import OnnxModule
from edgeopt.training.loop import cosine_lr, set_layout
from edgeopt.training.losses import Objective, relative_mse

__all__ = ["Block", "BlockReport", "blockwise_stage", "find_blocks", "reconstruct_blocks"]

logger = logging.getLogger(__name__)

_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class Block:
    """Nodes ``[start, stop)`` of an :class:`OnnxModule`, read ``inputs``, end at ``output``.

    ``kept``: for a pruned output, (axis, the teacher channels the student kept); None: same shape.
    """

    start: int
    stop: int
    inputs: tuple[str, ...]
    output: str
    kept: tuple[int, np.ndarray] | None = None


@dataclass
class BlockReport:
    """What :func:`reconstruct_blocks` did: per block, (output, steps, relative error before, after)."""

    blocks: list[tuple[str, int, float, float]]
    samples: int
    seconds: float


def blockwise_stage(module: OnnxModule, student: ir.Model, teacher: ir.Model, first: Feeds,
                    train: Callable[[], Iterator[Feeds]], objective: Objective, *, seconds: float, lr: float,
                    steps: int | None = None, device: str = "cpu", seed: int = 0) -> BlockReport:
    """Find the blocks of ``student`` (``module``) against ``teacher`` and reconstruct them (in place).

    ``first``: one batch, to read which teacher channels each pruned tensor kept.
    """
    began = time.perf_counter()
    shared = shared_features(student, teacher, 1 << 30)
    session = create_session(with_outputs(teacher, shared), config={"session.intra_op.allow_spinning": "0"})
    blocks = find_blocks(module, match_channels(student, shared, session, first), objective.output)
    logger.info("distill: %d block(s) to reconstruct, ending at %s", len(blocks), [b.output for b in blocks])
    left = seconds - (time.perf_counter() - began)
    return reconstruct_blocks(module, session, blocks, train, objective, seconds=left, lr=lr, steps=steps,
                              device=device, seed=seed)


def find_blocks(module: OnnxModule, maps: Mapping[str, tuple[int, np.ndarray] | None], output: str, *,
                min_layers: int = 3) -> list[Block]:
    """The blocks of ``module`` between the cuts in ``maps`` (tensors matched with the teacher), and the last
    block up to ``output``. A cut ends a block once the block holds ``min_layers`` weighted layers."""
    nodes = module.nodes
    weights = {n for n in module.keys if (p := module.parameter_of(n)) is not None and p.dim() >= 2}
    last_use: dict[str, int] = {}
    made = set(module.input_names)
    for k, (_, names, outputs) in enumerate(nodes):
        for name in names:
            if name in made:
                last_use[name] = k
        made.update(outputs)
    for name in module.output_names:
        last_use[name] = len(nodes)
    blocks: list[Block] = []
    alive = {n for n in module.input_names if n in last_use}
    start, inputs, layers = 0, tuple(module.input_names), 0
    for k, (op, names, outputs) in enumerate(nodes):
        layers += op in _WEIGHTED and any(n in weights for n in names)
        alive = {n for n in alive if last_use[n] > k} | {o for o in outputs if last_use.get(o, -1) > k}
        cut = next(iter(alive)) if len(alive) == 1 else None
        if cut is not None and cut in maps and cut in outputs and layers >= min_layers and k + 1 < len(nodes):
            blocks.append(Block(start, k + 1, inputs, cut, maps[cut]))
            start, inputs, layers = k + 1, (cut,), 0
    blocks.append(Block(start, len(nodes), inputs, output, None))
    return blocks


def reconstruct_blocks(module: OnnxModule, teacher: Any, blocks: list[Block], train: Callable[[], Iterator[Feeds]],
                       objective: Objective, *, seconds: float, lr: float, steps: int | None = None,
                       device: str = "cpu", max_bytes: int = 512 << 20, seed: int = 0) -> BlockReport:
    """Train ``blocks`` of ``module`` in order for about ``seconds`` in all (see the module docstring).

    Args:
        module: The student, trained in place.
        teacher: An ONNX Runtime session of the teacher that also outputs every block's output.
        blocks: From :func:`find_blocks`.
        train: The training batches.
        objective: The loss of the last block (the graph output).
        seconds: The time for all of it, the teacher's run included.
        lr: Peak Adam learning rate of each block (warm-up, then cosine decay over its time).
        steps: Train each block this many steps instead, whatever the time (for tests, fixed amounts of work).
        max_bytes: Memory for the kept inputs and targets.
    """
    start = time.perf_counter()
    if any(p.dim() == 4 for p in module.parameters()):  # convolutions train faster in NHWC, as in the loop
        set_layout(module, torch.channels_last)
    inputs, targets = _collect(module, teacher, blocks, train, device, max_bytes)
    samples = sum(len(next(iter(batch.values()))) for batch in inputs)
    costs = _costs(module, blocks, inputs[0])
    propagate = [c / 3 * len(inputs) for c in costs]  # a forward pass (a third of a step) over the samples
    left = seconds - (time.perf_counter() - start) - sum(propagate)
    planned = [max(0.0, left) * c / max(sum(costs), 1e-9) for c in costs]
    rng = np.random.default_rng(seed)
    report = []
    for b, block in enumerate(blocks):  # a block after one that overran still gets half its planned time
        budget = max(0.5 * planned[b], left * costs[b] / max(sum(costs[b:]), 1e-9))
        loss = _loss(objective if b == len(blocks) - 1 else None)
        params = _params(module, block)
        before = _error(module, block, inputs, targets[b], loss)
        began = time.perf_counter()
        start_weights = [p.detach().clone() for p in params]
        done = _train_block(module, block, params, inputs, targets[b], loss, budget, steps, lr, device,
                            rng) if params else 0
        left -= time.perf_counter() - began
        after = _error(module, block, inputs, targets[b], loss)
        if not after <= before:  # diverged (or NaN): the block keeps the weights it started with
            logger.warning("distill: block '%s' got worse (%.4g -> %.4g; lower --block-lr): its weights are "
                           "left as they were", block.output, before, after)
            with torch.no_grad():
                for param, weight in zip(params, start_weights, strict=True):
                    param.copy_(weight)
            after = before
        report.append((block.output, done, before, after))
        logger.info("distill: block %d/%d -> '%s': %d steps, relative error %.4f -> %.4f", b + 1, len(blocks),
                    block.output, done, before, after)
        if b + 1 < len(blocks):
            inputs = _propagate(module, block, inputs)
    return BlockReport(report, samples, time.perf_counter() - start)


def _collect(module: OnnxModule, teacher: Any, blocks: list[Block], train: Callable[[], Iterator[Feeds]],
             device: str, max_bytes: int) -> tuple[list[dict[str, torch.Tensor]], list[list[torch.Tensor]]]:
    """The graph inputs and, per block, the teacher's targets (kept channels, float16) of as many batches as fit."""
    names = [block.output for block in blocks]
    inputs: list[dict[str, torch.Tensor]] = []
    targets: list[list[torch.Tensor]] = [[] for _ in blocks]
    size = 0
    for feeds in train():
        feeds = {name: feeds[name] for name in module.input_names}
        wanted = teacher.run(names, feeds)
        kept = [_kept(torch.from_numpy(w), b.kept).to(torch.float16) for w, b in zip(wanted, blocks, strict=True)]
        size += sum(a.nbytes for a in feeds.values()) + sum(t.numel() * 2 for t in kept)
        if size > max_bytes and inputs:
            break
        inputs.append({k: _layout(torch.from_numpy(v).to(device)) for k, v in feeds.items()})
        for target, t in zip(targets, kept, strict=True):
            target.append(_layout(t.to(device)))
    return inputs, targets


def _kept(tensor: torch.Tensor, kept: tuple[int, np.ndarray] | None) -> torch.Tensor:
    return tensor if kept is None else tensor.index_select(kept[0], torch.from_numpy(kept[1]))


def _layout(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor


def _float(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in batch.items()}


def _costs(module: OnnxModule, blocks: list[Block], first: dict[str, torch.Tensor]) -> list[float]:
    """Seconds of each block's forward and backward pass on one batch (the student run once, block by block)."""
    rounds = []
    for _ in range(3):  # the least of 3 rounds: the first is slow (allocations), and others' work adds noise
        costs, values = [], _float(first)
        for block in blocks:
            began = time.perf_counter()
            got = module.run_nodes(values, block.start, block.stop)[block.output]
            got.float().square().mean().backward()
            costs.append(time.perf_counter() - began)
            values = {block.output: got.detach()}
        module.zero_grad(set_to_none=True)
        rounds.append(costs)
    return [min(c) for c in zip(*rounds, strict=True)]


def _params(module: OnnxModule, block: Block) -> list[torch.nn.Parameter]:
    names = {n for _, inputs, _ in module.nodes[block.start:block.stop] for n in inputs}
    found = (module.parameter_of(n) for n in sorted(names))
    return [p for p in found if p is not None and p.requires_grad]


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _loss(objective: Objective | None) -> Loss:
    return objective if objective is not None else relative_mse


def _train_block(module: OnnxModule, block: Block, params: list[torch.nn.Parameter],
                 inputs: list[dict[str, torch.Tensor]], targets: list[torch.Tensor], loss: Loss, budget: float,
                 total: int | None, lr: float, device: str, rng: np.random.Generator) -> int:
    """Adam steps on the block for ``budget`` seconds, or ``total`` steps (warm-up, then cosine decay)."""
    optimizer = torch.optim.Adam(params, lr=lr, fused=torch.device(device).type == "cpu" or None)
    began, steps = time.perf_counter(), 0
    order: list[int] = []

    def progress() -> float:
        if total is not None:
            return steps / total
        return (time.perf_counter() - began) / budget if budget > 0 else 1.0

    while (done := progress()) < 1:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(lr, done)
        order = order or list(rng.permutation(len(inputs)))
        k = order.pop()
        got = module.run_nodes(_float(inputs[k]), block.start, block.stop)[block.output]
        value = loss(got, targets[k].float())
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        steps += 1
        if not math.isfinite(float(value.detach())):
            break
    return steps


def _error(module: OnnxModule, block: Block, inputs: list[dict[str, torch.Tensor]], targets: list[torch.Tensor],
           loss: Loss, batches: int = 4) -> float:
    """The block's loss on its first ``batches`` kept batches."""
    with torch.no_grad():
        values = [float(loss(module.run_nodes(_float(x), block.start, block.stop)[block.output], y.float()))
                  for x, y in zip(inputs[:batches], targets[:batches], strict=False)]
    return float(np.mean(values))


def _propagate(module: OnnxModule, block: Block, inputs: list[dict[str, torch.Tensor]]
               ) -> list[dict[str, torch.Tensor]]:
    """The next block's inputs: this (trained) block run on its inputs, kept as float16."""
    with torch.no_grad():
        return [{block.output: module.run_nodes(_float(x), block.start, block.stop)[block.output].to(torch.float16)}
                for x in inputs]
