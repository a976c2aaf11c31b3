"""Structured channel pruning on the ONNX graph: remove whole channels of coupled groups.

Builds the coupled-channel groups (:mod:`edgeopt.channels.builder`), scores their
channels (:mod:`edgeopt.channels.importance`), picks the channels to remove
(:mod:`edgeopt.channels.plan`) and slices every member constant along its axis, so
the sources produce fewer channels and the sinks read fewer. Tensor shapes on the
way and Reshape targets are updated. With ``repair``, the sinks are refit by least
squares on calibration data (:mod:`edgeopt.channels.repair`).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable
from typing import ClassVar

import numpy as np
import onnx_ir as ir

from edgeopt.channels.bn_reestimate import reestimate_batchnorm
from edgeopt.channels.builder import ChannelGroups, kept_length, positions
from edgeopt.channels.groups import build_groups
from edgeopt.channels.importance import CALIBRATED, Criterion, activation_scores, reconstruction_scores, weight_scores
from edgeopt.channels.plan import Kinds, PrunePlan, Rounding, Scope, make_plan, select
from edgeopt.channels.repair import SinkFit, bias_add, fit_sinks, fittable
from edgeopt.core.errors import CalibrationDataError, PassOptionError
from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import write_constant
from edgeopt.core.runtime import Feeds
from edgeopt.passes.infer_shapes import InferShapesPass
from edgeopt.passes.topological_sort import TopologicalSortPass

logger = logging.getLogger(__name__)

Removal = dict[ir.Value, dict[int, np.ndarray]]
"""Constant -> axis -> positions removed on that axis."""


class PruneChannelsPass(EdgeoptPass):
    """Remove the least important channels of every prunable coupled-channel group.

    Graph inputs and outputs keep their shapes. Only the main graph is pruned: a
    group that reaches a subgraph or function call is left alone. Each run prunes
    ``ratio`` of what is there, so a second run prunes again (``ratio=0`` changes
    nothing). ``self.plan`` holds the plan of the last run.

    Args:
        ratio: Fraction of channels to remove (per group, or of all channels with ``scope="global"``).
        criterion: ``l1`` | ``l2`` weight magnitude, ``bn`` BatchNorm scale, ``activation`` (mean ``|x|``) or
            ``reconstruction`` (change of the next layer's output, ``||W[:, c]||^2 * E[x_c^2]``): these two need
            calibration.
        scope: ``uniform`` (every group the same ratio) or ``global`` (one ranking of all channels).
        round_to: Round kept channel counts to a multiple of this.
        rounding: ``up`` (prune less than asked rather than more) or ``down`` (as Torch-Pruning).
        max_ratio: Never remove more than this fraction of a group.
        exclude: Node-name patterns (fnmatch): groups produced by a matching node are left alone.
        kinds: Which groups to prune: ``all``, ``channels`` (not attention heads) or ``heads`` (only
            whole attention heads: Q/K/V output features in blocks of head_dim and the O projection's rows).
        calibration: Sample data (path/spec or re-iterable of feeds) for ``activation`` and ``repair``.
        samples: Use at most this many calibration samples.
        repair: Refit the layers that lost input channels by least squares on calibration data.
        reestimate_bn: Recompute the running mean/var of the BatchNorms left in the graph on calibration
            data after pruning (:mod:`edgeopt.channels.bn_reestimate`); for models not cleaned up,
            or BN that cannot fold.
        plan_only: Compute ``self.plan`` and change nothing.
        on_batch: Called with the samples seen so far while streaming calibration data (progress bars).
    """

    name = "prune-channels"
    preserves_semantics = False
    path_options: ClassVar[tuple[str, ...]] = ("calibration",)

    def __init__(
        self, *, ratio: float = 0.3, criterion: Criterion = "l1", scope: Scope = "uniform", round_to: int = 8,
        max_ratio: float = 0.9, rounding: Rounding = "up", exclude: tuple[str, ...] = (),
        kinds: Kinds = "all",
        calibration: str | Iterable[Feeds] | None = None,
        samples: int | None = None, repair: bool = False, reestimate_bn: bool = False, plan_only: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0 or not 0.0 <= max_ratio < 1.0:
            raise PassOptionError(f"prune-channels: ratio and max_ratio must be in [0, 1), got {ratio}, {max_ratio}.")
        if criterion not in ("l1", "l2", "bn", "activation", "reconstruction"):
            raise PassOptionError("prune-channels: criterion must be l1, l2, bn, activation or reconstruction, "
                                  f"got {criterion!r}.")
        if scope not in ("uniform", "global"):
            raise PassOptionError(f"prune-channels: scope must be uniform or global, got {scope!r}.")
        if rounding not in ("up", "down"):
            raise PassOptionError(f"prune-channels: rounding must be up or down, got {rounding!r}.")
        if kinds not in ("all", "channels", "heads"):
            raise PassOptionError(f"prune-channels: kinds must be all, channels or heads, got {kinds!r}.")
        if round_to < 1:
            raise PassOptionError(f"prune-channels: round_to must be at least 1, got {round_to}.")
        if calibration is None and (criterion in CALIBRATED or repair or reestimate_bn):
            raise CalibrationDataError("prune-channels: criteria 'activation', 'reconstruction', repair and "
                                       "reestimate-bn need calibration data; "
                                       "pass --calib DATA (a folder of .npz/.npy or images, or random:N).")
        self.ratio, self.criterion, self.scope, self.round_to = ratio, criterion, scope, round_to
        self.max_ratio, self.exclude, self.calibration, self.samples = max_ratio, exclude, calibration, samples
        self.repair, self.plan_only, self.on_batch, self.rounding = repair, plan_only, on_batch, rounding
        self.kinds, self.reestimate_bn = kinds, reestimate_bn
        self.bn_reestimated = 0
        self.plan: PrunePlan | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        TopologicalSortPass()(model)
        InferShapesPass()(model)
        groups = build_groups(model)
        for group in groups.prunable():
            matched = [s for s in group.sources if any(fnmatch.fnmatchcase(s, p) for p in self.exclude)]
            if matched:
                group.reason = f"excluded ({matched[0]})"
            elif self.kinds != "all" and (group.head_dim is not None) != (self.kinds == "heads"):
                group.reason = f"not selected (kinds={self.kinds})"
        removed = select(groups.groups, self._scores(model, groups), ratio=self.ratio, scope=self.scope,
                         round_to=self.round_to, max_ratio=self.max_ratio, rounding=self.rounding)
        self.plan = make_plan(groups.groups, removed, criterion=self.criterion, ratio=self.ratio, scope=self.scope)
        before, after = self.plan.channels
        logger.info("prune-channels: %d group(s), %d prunable; channels %d -> %d", len(groups.groups),
                    len(groups.prunable()), before, after)
        if self.plan_only or not removed:
            return ir.passes.PassResult(model, modified=False)
        removal = _removal(groups, removed)
        fits = _fits(model, removal) if self.repair else []
        solutions = fit_sinks(model, fits, self.calibration, samples=self.samples,  # type: ignore[arg-type]
                              on_batch=self.on_batch) if fits else []  # type: ignore[arg-type]
        for value, axes in removal.items():
            array = _const(value)
            for axis, cut in axes.items():
                array = np.delete(array, cut, axis=axis)
            write_constant(value, array)
        _update_shapes(groups, removed)
        for fit, (weight, bias) in zip(fits, solutions, strict=True):
            _write_fit(model, fit, weight, bias, removal)
        logger.info("prune-channels: refit %d layer(s)", len(fits))
        if self.reestimate_bn:
            InferShapesPass()(model)
            self.bn_reestimated = reestimate_batchnorm(model, self.calibration,  # type: ignore[arg-type]
                                                       samples=self.samples, on_batch=self.on_batch)
        return ir.passes.PassResult(model, modified=True)

    def _scores(self, model: ir.Model, groups: ChannelGroups) -> dict[int, np.ndarray]:
        prunable = groups.prunable()
        if self.criterion not in CALIBRATED:
            return weight_scores(prunable, self.criterion)
        if not prunable or self.ratio == 0:
            return {}
        assert self.calibration is not None
        scores = activation_scores if self.criterion == "activation" else reconstruction_scores
        return scores(model, groups, self.calibration, samples=self.samples, on_batch=self.on_batch)


def _const(value: ir.Value) -> np.ndarray:
    tensor = ir.convenience.get_const_tensor(value)
    assert tensor is not None
    return tensor.numpy()


def _removal(groups: ChannelGroups, removed: dict[int, np.ndarray]) -> Removal:
    removal: Removal = {}
    for group in groups.groups:
        channels = removed.get(group.id)
        if channels is None:
            continue
        for member in group.members:
            cut = member.offset + channels[:, None] * member.block + np.arange(member.block)[None, :]
            axes = removal.setdefault(member.value, {})
            axes[member.axis] = np.union1d(axes.get(member.axis, np.zeros(0, dtype=np.int64)), cut.reshape(-1))
    return removal


def _update_shapes(groups: ChannelGroups, removed: dict[int, np.ndarray]) -> None:
    for carrier in groups.carriers:
        shape = carrier.value.shape
        if shape is None or not positions(carrier.layout, removed).size:
            continue
        dims = list(shape.dims)
        dims[len(dims) + carrier.axis] = kept_length(carrier.layout, removed)
        carrier.value.shape = ir.Shape(dims)
    for node, layout in groups.depthwise:
        node.attributes["group"] = ir.AttrInt64("group", kept_length(layout, removed))
    for value, index, layout in groups.reshapes:
        target = _const(value).copy()
        target[index] = kept_length(layout, removed)
        write_constant(value, target)
    for node, array, layout in groups.targets:
        if positions(layout, removed).size:
            assert node.graph is not None
            base = name = f"{node.name or 'reshape'}_pruned_shape"
            while name in node.graph.initializers:
                name = f"{base}_{len(node.graph.initializers)}"
            fresh = ir.Value(name=name, const_value=ir.tensor(array, name=name))
            fresh.shape, fresh.dtype = ir.Shape(array.shape), ir.DataType.INT64
            node.graph.register_initializer(fresh)
            node.replace_input_with(1, fresh)
            node.attributes["allowzero"] = ir.AttrInt64("allowzero", 0)  # 0 copies the input's dimension


_IN_AXIS = {"Conv": 1, "MatMul": 0}


def _fits(model: ir.Model, removal: Removal) -> list[SinkFit]:
    fits = []
    for node in model.graph:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or node.inputs[1] not in removal:
            continue
        weight_value = node.inputs[1]
        assert weight_value is not None
        weight = _const(weight_value)
        in_axis = _IN_AXIS.get(node.op_type, 1 if node.attributes.get_int("transB", 0) else 0)
        cut = removal[weight_value].get(in_axis)
        reason = fittable(node, weight)
        if cut is None or reason:
            if cut is not None:
                logger.debug("prune-channels: not refitting %s: %s", node.name, reason)
            continue
        kept = np.setdiff1d(np.arange(weight.shape[in_axis]), cut)
        fits.append(SinkFit(node, weight, in_axis, kept, bias_add(node) if node.op_type == "MatMul" else None))
    return fits


def _write_fit(model: ir.Model, fit: SinkFit, weight: np.ndarray, bias: np.ndarray | None, removal: Removal) -> None:
    node = fit.node
    weight_value = node.inputs[1]
    assert weight_value is not None
    out_axis = 1 - fit.in_axis if node.op_type != "Conv" else 0
    out_cut = removal[weight_value].get(out_axis, np.zeros(0, dtype=np.int64))
    write_constant(weight_value, np.delete(weight, out_cut, axis=out_axis))
    if bias is None:
        return
    bias = np.delete(bias, out_cut)
    if fit.bias_add is not None:  # MatMul: the refit bias goes into the Add after it
        write_constant(fit.bias_add, (_const(fit.bias_add) + bias).astype(weight.dtype))
        return
    old = node.inputs[2] if len(node.inputs) > 2 else None
    if old is not None:
        shape = _const(old).shape
        write_constant(old, bias.reshape((1,) * (len(shape) - 1) + (-1,)))
    else:
        name = f"{weight_value.name}_refit_bias"
        value = ir.Value(name=name, const_value=ir.tensor(bias, name=name))
        value.shape, value.dtype = ir.Shape(bias.shape), ir.DataType.from_numpy(bias.dtype)
        model.graph.register_initializer(value)
        node.resize_inputs(3)
        node.replace_input_with(2, value)
    if node.op_type == "Gemm":
        node.attributes["alpha"] = ir.AttrFloat32("alpha", 1.0)
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
