"""Streaming calibration: run sample batches through ONNX Runtime and observe tensors.

The tensors to calibrate become extra outputs of a copy of the model; each batch
runs through it, and each output goes to its tensor's observer and is dropped at
once. Peak memory is a share of one batch's activations (:mod:`edgeopt.calibration.fetch`
fetches them in groups within a byte budget) plus the observers' state (a histogram
of a few thousand bins at most), however many batches there are.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from edgeopt.calibration.fetch import FETCH_BYTES, FetchGroups
from edgeopt.calibration.observers import MinMaxObserver, Observer, check_factory
from edgeopt.core.errors import CalibrationDataError, EdgeoptError, PassOptionError
from edgeopt.core.runtime import Feeds, create_session, model_inputs
from edgeopt.data.readers import batches, open_reader

logger = logging.getLogger(__name__)

_FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16})
_ORT_FLOAT_TYPES = frozenset({"tensor(float)", "tensor(float16)"})


@dataclass
class CalibrationResult:
    """Calibrated ranges and what it took to get them.

    Attributes:
        ranges: Tensor name -> ``(low, high)`` from its observer.
        samples: Rows (axis 0) of the first model input, summed over batches.
        batches: Number of batches run.
        seconds: Wall time of the whole calibration.
    """

    ranges: dict[str, tuple[float, float]]
    samples: int
    batches: int
    seconds: float
    observers: dict[str, Observer] = field(default_factory=dict)
    """Tensor name -> its observer, for what else it kept (e.g. ``RangeCandidatesObserver.candidates()``)."""


def calibrate(
    model: ir.Model,
    batches: Iterable[Feeds],
    *,
    tensors: Sequence[str] | None = None,
    observer: Callable[[], Observer] = MinMaxObserver,
    on_batch: Callable[[int], None] | None = None,
    max_bytes: int | None = FETCH_BYTES,
) -> CalibrationResult:
    """Observe float tensors of ``model`` on ``batches`` and compute their ranges.

    ``model`` is not modified. Only float32 and float16 tensors are calibrated;
    others are skipped (with a warning when named in ``tensors``).

    Args:
        model: The model to calibrate; larger than 2 GB is fine.
        batches: Input feeds, one dict per batch (any iterable, read once).
        tensors: Names to calibrate: graph inputs, node outputs or initializers.
            None means every float tensor of the main graph that is an input or
            output of a node, graph inputs included and initializers excluded.
        observer: Observer factory (a class or ``functools.partial``), called
            once per tensor. An observer instance is rejected.
        on_batch: Called after each batch with the number of samples so far.
        max_bytes: Tensors whose observers need them whole come from ORT in groups of
            about this many bytes per batch (:mod:`edgeopt.calibration.fetch`); None: all
            in one call. The ranges do not depend on it.

    Raises:
        CalibrationDataError: no batches, a batch ONNX Runtime can't run, or an
            unknown tensor name.
        PassOptionError: ``observer`` is not a factory.
    """
    factory = check_factory(observer)
    started = time.perf_counter()
    work = model.clone()  # shares tensors: cheap even for large models
    named = tensors is not None
    inputs = [str(v.name) for v in model_inputs(work) if v.name]
    selected = _select(work.graph, tensors)
    fed, constants, computed = _plan(selected, set(inputs), named=named)
    extents_only = _observes_extents(factory)
    reduced = [v for v in computed if extents_only and _is_float32(v)]
    runner = _Runner(model, work, [v for v in computed if v not in reduced], reduced, named=named,
                     max_bytes=max_bytes)
    observers = {name: _make(factory) for name in selected
                 if name in fed or name in constants or name in runner.observed}
    for name, array in constants.items():
        observers[name].update(array)
    samples = count = 0
    for batch in batches:
        if count == 0:
            _check_batch(batch, inputs)
        for name in fed:
            observers[name].update(np.asarray(batch[name]))
        runner.run({name: batch[name] for name in inputs}, observers, count)
        count += 1
        samples += _rows(batch[inputs[0]]) if inputs else 1
        if on_batch is not None:
            on_batch(samples)
    if count == 0:
        raise CalibrationDataError("calibration got no batches: the reader yielded nothing.")
    ranges = {}
    for name, obs in observers.items():
        try:
            ranges[name] = obs.compute()
        except CalibrationDataError as e:
            logger.warning("calibrate: no range for '%s': %s", name, e)
    seconds = time.perf_counter() - started
    logger.info("calibrate: %d tensor(s), %d batch(es), %d sample(s) in %.2fs", len(ranges), count, samples, seconds)
    return CalibrationResult(ranges=ranges, samples=samples, batches=count, seconds=seconds,
                             observers={name: observers[name] for name in ranges})


class _Runner:
    """Runs batches and feeds observers.

    Tensors whose observers need only each batch's extent get ReduceMin/ReduceMax
    nodes in the graph: ORT returns two scalars instead of the activation, which is
    what makes MinMax calibration as fast as ONNX Runtime's own. A batch whose extent
    is not finite (NaN or infinities, which observers ignore) is fetched whole from
    a second session, made the first time that happens. The other tensors are fetched
    whole, a group within ``max_bytes`` at a time (:class:`~edgeopt.calibration.fetch.FetchGroups`),
    from a session without the reductions.
    """

    def __init__(self, model: ir.Model, work: ir.Model, full: list[ir.Value], reduced: list[ir.Value], *,
                 named: bool, max_bytes: int | None) -> None:
        self._model, self._named = model, named
        scalars = work.clone()  # before `work` gets the full tensors as outputs, which ORT would allocate
        produced = {v.name: v for node in scalars.graph for v in node.outputs}
        self.extents = _add_extents(scalars, [produced[str(v.name)] for v in reduced])
        self.session = _load(scalars) if self.extents else None
        self.fetch: list[str] = []
        self._groups: FetchGroups | None = None
        if full:
            session, self.fetch = _session(work, full, named=named)
            self._groups = FetchGroups(work, self.fetch, session=session, max_bytes=max_bytes)
        self.observed = [*self.fetch, *self.extents]
        self._fallback: ort.InferenceSession | None = None

    def run(self, feeds: Feeds, observers: dict[str, Observer], index: int) -> None:
        if self._groups is not None:
            for group, _ in enumerate(self._groups.spans(feeds)):
                try:
                    fetched = self._groups.run(group, feeds)
                except Exception as e:
                    raise CalibrationDataError(f"calibration batch {index}: ONNX Runtime failed to run it: {e}") from e
                for name in list(fetched):
                    observers[name].update(fetched.pop(name))
        if self.session is None:
            return
        names = [o for pair in self.extents.values() for o in pair]
        try:
            arrays = self.session.run(names, feeds)
        except Exception:  # e.g. a reduction of an empty tensor
            self._run_whole(list(self.extents), feeds, observers, index)
            return
        fetched = dict(zip(names, arrays, strict=True))
        whole = []
        for name, (low_name, high_name) in self.extents.items():
            low, high = float(fetched[low_name]), float(fetched[high_name])
            if math.isfinite(low) and math.isfinite(high):
                observers[name].update_extent(low, high)  # type: ignore[attr-defined]
            else:
                whole.append(name)
        if whole:
            self._run_whole(whole, feeds, observers, index)

    def _run_whole(self, names: list[str], feeds: Feeds, observers: dict[str, Observer], index: int) -> None:
        if self._fallback is None:
            copy = self._model.clone()
            values = {v.name: v for node in copy.graph for v in node.outputs if v.name in self.extents}
            present = set(copy.graph.outputs)
            copy.graph.outputs.extend(v for name, v in values.items() if v not in present)
            self._fallback = create_session(copy, low_memory=True)
        try:
            arrays = self._fallback.run(names, feeds)
        except Exception as e:
            raise CalibrationDataError(f"calibration batch {index}: ONNX Runtime failed to run it: {e}") from e
        for name in reversed(names):
            observers[name].update(arrays.pop())


def _add_extents(work: ir.Model, values: list[ir.Value]) -> dict[str, tuple[str, str]]:
    """Add ReduceMin/ReduceMax of each value, right after its producer, as graph outputs;
    name -> (min output, max output)."""
    taken = {v.name for node in work.graph for v in node.outputs} | {v.name for v in work.graph.inputs}
    extents = {}
    for value in values:
        names = []
        nodes = []
        for op in ("ReduceMin", "ReduceMax"):
            name = f"{value.name}__edgeopt_{op[6:].lower()}"
            while name in taken:
                name += "_"
            taken.add(name)
            node = ir.Node("", op, [value], attributes=[ir.AttrInt64("keepdims", 0)],
                           outputs=[ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([]))])
            nodes.append(node)
            work.graph.outputs.append(node.outputs[0])
            names.append(name)
        producer = value.producer()
        if producer is not None and producer.graph is work.graph:
            work.graph.insert_after(producer, nodes)
        else:
            work.graph.extend(nodes)
        extents[str(value.name)] = (names[0], names[1])
    return extents


def _observes_extents(factory: Callable[[], Observer]) -> bool:
    """Whether the factory's observers need only each batch's extent (without making one)."""
    while isinstance(factory, functools.partial):
        factory = factory.func
    return isinstance(factory, type) and issubclass(factory, MinMaxObserver)


def _is_float32(value: ir.Value) -> bool:
    return isinstance(value.type, ir.TensorType) and value.type.dtype == ir.DataType.FLOAT


def _session(work: ir.Model, computed: list[ir.Value], *, named: bool) -> tuple[ort.InferenceSession, list[str]]:
    """One session of ``work`` with ``computed`` added as outputs, and the float ones to fetch."""
    present = set(work.graph.outputs)
    work.graph.outputs.extend(v for v in computed if v not in present)  # ORT types any untyped ones
    session = _load(work)
    types = {o.name: o.type for o in session.get_outputs()}
    fetch = []
    for value in computed:
        name = str(value.name)
        if types.get(name) in _ORT_FLOAT_TYPES:
            fetch.append(name)
        else:
            _skip(name, types.get(name), named=named)
    return session, fetch


def _load(work: ir.Model) -> ort.InferenceSession:
    try:
        return create_session(work, low_memory=True)
    except EdgeoptError:
        raise
    except Exception as e:
        raise CalibrationDataError(f"ONNX Runtime cannot load the model to calibrate: {e}") from e


def _select(graph: ir.Graph, tensors: Sequence[str] | None) -> dict[str, ir.Value]:
    """Name -> value of the tensors to calibrate, in graph order."""
    inputs = [v for v in graph.inputs if v.name and not v.is_initializer()]
    produced = [v for node in graph for v in node.outputs if v.name]
    if tensors is None:
        return {v.name: v for v in [*inputs, *produced] if v.name}
    known: dict[str, ir.Value] = {v.name: v for v in [*inputs, *produced, *graph.initializers.values()] if v.name}
    missing = [name for name in tensors if name not in known]
    if missing:
        close = difflib.get_close_matches(missing[0], list(known), n=2)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise CalibrationDataError(
            f"no tensor named {', '.join(repr(m) for m in missing)} in the main graph{hint}. "
            "Name graph inputs, node outputs or initializers.")
    return {name: known[name] for name in dict.fromkeys(tensors)}


def _plan(values: dict[str, ir.Value], inputs: set[str], *,
          named: bool) -> tuple[list[str], dict[str, np.ndarray], list[ir.Value]]:
    """Split the float tensors to calibrate into graph inputs (observed in the feeds),
    initializers (observed once, now) and computed values (fetched from ORT)."""
    fed: list[str] = []
    constants: dict[str, np.ndarray] = {}
    computed: list[ir.Value] = []
    for name, value in values.items():
        if name in inputs:
            if _is_float(value, named=named):
                fed.append(name)
        elif value.is_initializer():
            if value.const_value is not None and _is_float(value, named=named):
                constants[name] = value.const_value.numpy()
        elif value.type is None or _is_float(value, named=named):
            computed.append(value)
    return fed, constants, computed


def _make(factory: Callable[[], Observer]) -> Observer:
    made = factory()
    if not isinstance(made, Observer):
        raise PassOptionError(f"observer factory {factory!r} made {type(made).__name__}, which has no update() "
                              "and compute(). Pass an observer class or functools.partial of one.")
    return made


def _is_float(value: ir.Value, *, named: bool) -> bool:
    if isinstance(value.type, ir.TensorType) and value.type.dtype in _FLOAT_TYPES:
        return True
    if value.type is not None:
        _skip(value.name or "", str(value.type), named=named)
    return False


def _skip(name: str, kind: str | None, *, named: bool) -> None:
    log = logger.warning if named else logger.debug
    log("calibrate: skipping '%s' of type %s; only float32 and float16 tensors are calibrated", name, kind)


def _check_batch(batch: Feeds, inputs: list[str]) -> None:
    missing = [name for name in inputs if name not in batch]
    if missing:
        raise CalibrationDataError(
            f"calibration batch has no array for input(s) {', '.join(repr(m) for m in missing)}; "
            f"it has {', '.join(repr(k) for k in batch) or 'nothing'}. Every batch must feed every model input.")


def _rows(array: np.ndarray) -> int:
    shape = np.shape(array)
    return int(shape[0]) if shape else 1


def stream_outputs(
    work: ir.Model, names: Sequence[str], calibration: str | Iterable[Feeds], *, model: ir.Model,
    samples: int | None = None, batch_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``work`` (a copy of ``model`` with extra graph outputs) on the calibration data.

    One ONNX Runtime session serves every batch; each yields that batch's feeds and
    named outputs only, so memory does not grow with the number of samples. The feeds
    are checked against ``model`` (names, dtypes, ranks, static dims). Each dict is
    emptied when the next is made: keep its arrays, not the dict.

    Raises:
        CalibrationDataError: unusable data, or a batch ONNX Runtime cannot run.
    """
    for _, batch in stream_output_groups(work, names, calibration, model=model, samples=samples,
                                         batch_size=batch_size, max_bytes=None):
        yield batch


def stream_output_groups(
    work: ir.Model, names: Sequence[str], calibration: str | Iterable[Feeds], *, model: ir.Model,
    samples: int | None = None, batch_size: int | None = None, max_bytes: int | None = FETCH_BYTES,
) -> Iterator[tuple[range, dict[str, np.ndarray]]]:
    """:func:`stream_outputs` holding at most about ``max_bytes`` of outputs at a time.

    Each batch comes as consecutive groups of ``names`` (:class:`~edgeopt.calibration.fetch.FetchGroups`):
    ``(span of names, the feeds and the outputs named in it)``, spans in order. ``names``
    may repeat a name or name a graph input (taken from the feeds). Each dict is emptied
    when the next is made, so that one group's arrays are gone before the next run.
    """
    reader = open_reader(calibration, model) if isinstance(calibration, str) else calibration
    try:
        session = create_session(work, low_memory=True)
    except Exception as e:
        raise CalibrationDataError(f"ONNX Runtime cannot load the model to calibrate: {e}") from e
    inputs = [i.name for i in session.get_inputs()]
    groups = FetchGroups(work, names, session=session, max_bytes=max_bytes)
    del session  # the groups keep it if they run it
    for number, feeds in enumerate(batches(reader, model, batch_size=batch_size, limit=samples)):
        given = {name: feeds[name] for name in inputs}
        for index, span in enumerate(groups.spans(given)):
            try:
                # no names: only the feeds are wanted (ORT would return every output for an empty list)
                batch = {**feeds, **groups.run(index, given)}
            except CalibrationDataError:
                raise
            except Exception as e:
                raise CalibrationDataError(f"calibration batch {number}: ONNX Runtime failed to run it: {e}") from e
            yield span, batch
            batch.clear()
