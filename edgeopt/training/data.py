"""Sample streams for distillation: a fixed held-out split, and a shuffle buffer for training.

Samples are numbered in reader order; sample ``i`` is held out when
``floor((i + 1) * f) > floor(i * f)`` for the held-out fraction ``f``, so the split is
spread evenly, the same on every pass, and needs no look-ahead. A model with a
static batch dim is split by whole batches instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from edgeopt.core.runtime import CalibrationReader, Feeds, model_inputs
from edgeopt.data.readers import batches

__all__ = ["HeldOut", "TeacherOutputs", "TEACHER_KEY", "labelled", "static_batch", "split_stream", "shuffled"]


def static_batch(model: ir.Model) -> int | None:
    """The model's fixed batch size, if an input fixes axis 0."""
    sizes = {v.shape[0] for v in model_inputs(model) if v.shape is not None and len(v.shape)
             and isinstance(v.shape[0], int)}
    return next(iter(sizes)) if sizes else None


def _held(index: np.ndarray, fraction: float) -> np.ndarray:
    return np.floor((index + 1) * fraction) > np.floor(index * fraction)


def split_stream(reader: CalibrationReader, model: ir.Model, part: Literal["train", "holdout"], *,
                 fraction: float, batch_size: int, limit: int | None = None) -> Iterator[Feeds]:
    """The ``part`` of the reader's samples, checked against ``model``, in batches of up to ``batch_size``."""
    fixed = static_batch(model)
    start = 0
    for k, feeds in enumerate(batches(reader, model, batch_size=fixed or batch_size, limit=limit)):
        rows = len(next(iter(feeds.values())))
        if fixed is not None:
            if bool(_held(np.array([k]), fraction)[0]) == (part == "holdout"):
                yield feeds
            continue
        held = _held(np.arange(start, start + rows), fraction)
        start += rows
        keep = held if part == "holdout" else ~held
        if keep.all():
            yield feeds
        elif keep.any():
            yield {name: array[keep] for name, array in feeds.items()}


def shuffled(stream: Iterator[Feeds], rng: np.random.Generator, *, buffer: int = 16) -> Iterator[Feeds]:
    """Batches of ``stream`` in a random order within a window of ``buffer`` batches, rows mixed too."""
    pending: list[Feeds] = []
    for feeds in stream:
        pending.append(feeds)
        if len(pending) >= buffer:
            yield _mixed(pending.pop(int(rng.integers(len(pending)))), rng)
    while pending:
        yield _mixed(pending.pop(int(rng.integers(len(pending)))), rng)


def _mixed(feeds: Feeds, rng: np.random.Generator) -> Feeds:
    rows = len(next(iter(feeds.values())))
    order = rng.permutation(rows)
    return {name: array[order] for name, array in feeds.items()}



def labelled(model: ir.Model, key: str) -> ir.Model:
    """A node-less model taking ``model``'s inputs and an untyped one named ``key`` (labels), for readers.

    Readers and :func:`split_stream` then read, check and batch the labels with the inputs.
    """
    inputs = [ir.Value(name=v.name, shape=v.shape, type=v.type) for v in model_inputs(model)]
    inputs.append(ir.Value(name=key))
    return ir.Model(ir.Graph(inputs, [], nodes=[], opset_imports={"": 18}), ir_version=model.ir_version)


class HeldOut:
    """The held-out samples with the teacher's output for each batch, re-iterable.

    Kept in memory when inputs and teacher outputs together stay under ``max_bytes``
    (evaluations then read no files and run no teacher); streamed again on every pass
    otherwise.
    """

    def __init__(self, stream: Callable[[], Iterator[Feeds]], teacher: Any, output: str, *,
                 inputs: Sequence[str] | None = None, max_bytes: int = 256 << 20) -> None:
        self.stream, self.teacher, self.output, self.inputs = stream, teacher, output, inputs
        self.cached: list[tuple[Feeds, np.ndarray]] | None = []
        size = 0
        for feeds, want in self._run():
            size += sum(a.nbytes for a in feeds.values()) + want.nbytes
            if size > max_bytes:
                self.cached = None
                break
            self.cached.append((feeds, want))

    def _run(self) -> Iterator[tuple[Feeds, np.ndarray]]:
        for feeds in self.stream():
            if self.inputs is not None:  # labels are not the models' inputs
                feeds = {name: feeds[name] for name in self.inputs}
            yield feeds, self.teacher.run([self.output], feeds)[0]

    def __call__(self) -> Iterator[tuple[Feeds, np.ndarray]]:
        return iter(self.cached) if self.cached is not None else self._run()


TEACHER_KEY = "\0teacher:"
"""Prefix of the keys under which :class:`TeacherOutputs` attaches the teacher's outputs to a batch."""


class TeacherOutputs:
    """The training batches with the teacher's outputs attached, so shuffling moves them with their rows.

    The outputs of the first batches are kept in memory, up to ``max_bytes`` in all: later
    epochs run the teacher only on the batches past that (EfficientNet-Lite0's logits for
    1,000 samples take 4 MB). Only for unaugmented training: a fresh view needs the teacher.
    A kept output is used only for the same inputs (a digest of the batch): a reader that
    shuffles or samples gets the teacher run again, never another batch's outputs.
    """

    def __init__(self, stream: Callable[[], Iterator[Feeds]], teacher: Any, outputs: Sequence[str], *,
                 inputs: Sequence[str], max_bytes: int = 256 << 20) -> None:
        self.stream, self.teacher, self.outputs, self.inputs = stream, teacher, list(outputs), inputs
        self.cached: list[tuple[bytes, list[np.ndarray]]] = []
        self.max_bytes, self.size = max_bytes, 0

    def __call__(self) -> Iterator[Feeds]:
        for k, feeds in enumerate(self.stream()):
            inputs = {name: feeds[name] for name in self.inputs}
            digest = _digest(inputs)
            if k < len(self.cached) and self.cached[k][0] == digest:
                outputs = self.cached[k][1]
            else:
                outputs = self.teacher.run(self.outputs, inputs)
                size = sum(a.nbytes for a in outputs)
                if k == len(self.cached) and self.size + size <= self.max_bytes:
                    self.cached.append((digest, outputs))
                    self.size += size
            yield {**feeds, **{TEACHER_KEY + name: out for name, out in zip(self.outputs, outputs, strict=True)}}


def _digest(feeds: Feeds) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}{array.dtype}{array.shape}".encode())
        digest.update(array.data)
    return digest.digest()
