"""Torch implementations of ONNX's shape, indexing and quantization ops (see :mod:`edgeopt.training.ops`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from edgeopt.training.ops import OPS, Tensor, _ints, _op

__all__ = ["OPS"]


@_op("Reshape")
def _reshape(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x, shape = i[0], _ints(i[1])
    if not a.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return [x.reshape(shape)]


@_op("Flatten")
def _flatten(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x = i[0]
    axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(int(torch.tensor(x.shape[:axis]).prod()), -1)]


@_op("Transpose")
def _transpose(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    perm = a.get("perm", list(reversed(range(i[0].dim()))))
    return [i[0].permute(perm)]


@_op("Concat")
def _concat(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    return [torch.cat([t for t in i if t is not None and (t.numel() or t.dim() > 1)], dim=a["axis"])]


@_op("Split")
def _split(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x, axis = i[0], a.get("axis", 0)
    sizes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("split")
    if not sizes:
        count = a.get("num_outputs", a["_outputs"])
        chunk = -(-x.shape[axis] // count)
        sizes = [min(chunk, x.shape[axis] - k * chunk) for k in range(count)]
    return list(torch.split(x, sizes, dim=axis))


@_op("Slice")
def _slice(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x = i[0]
    starts, ends = _ints(i[1]), _ints(i[2])
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(len(starts)))
    steps = _ints(i[4]) if len(i) > 4 and i[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        size = x.shape[axis]
        if step > 0:
            index[axis] = slice(_clamp(start, size, 0, size), _clamp(end, size, 0, size), step)
            continue
        first = _clamp(start, size, -1, size - 1)
        last = _clamp(end, size, -1, size - 1)
        count = max(0, -(-(first - last) // -step))
        index[axis] = slice(first - (count - 1) * -step, first + 1, -step) if count else slice(0, 0)
        flips.append(axis)
    out = x[tuple(index)]
    return [out.flip(flips) if flips else out]


def _clamp(value: int, size: int, low: int, high: int) -> int:
    value = value + size if value < 0 else value
    return max(low, min(high, value))


@_op("Gather")
def _gather(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x, index = i
    axis = a.get("axis", 0) % x.dim()
    index = torch.where(index < 0, index + x.shape[axis], index)
    out = x.index_select(axis, index.reshape(-1))
    return [out.reshape(*x.shape[:axis], *index.shape, *x.shape[axis + 1:])]


@_op("GatherND")
def _gather_nd(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x, index = i
    if a.get("batch_dims", 0):
        raise NotImplementedError("GatherND with batch_dims > 0")
    index = torch.where(index < 0, index + torch.tensor(x.shape[:index.shape[-1]], device=index.device), index)
    return [x[tuple(index[..., k] for k in range(index.shape[-1]))]]


@_op("Squeeze")
def _squeeze(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(axis % x.dim() for axis in axes))]


@_op("Unsqueeze")
def _unsqueeze(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a["axes"]
    rank = x.dim() + len(axes)
    for axis in sorted(axis % rank for axis in axes):
        x = x.unsqueeze(axis)
    return [x]


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2")
def _reduce(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x = i[0]
    axes = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("axes")
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    dims = tuple(axis % x.dim() for axis in axes)
    op = a["_op"]
    if op == "ReduceMean":
        return [x.mean(dim=dims, keepdim=keep)]
    if op == "ReduceSum":
        return [x.sum(dim=dims, keepdim=keep)]
    if op == "ReduceL2":
        return [x.pow(2).sum(dim=dims, keepdim=keep).sqrt()]
    return [x.amax(dim=dims, keepdim=keep) if op == "ReduceMax" else x.amin(dim=dims, keepdim=keep)]


@_op("Pad")
def _pad(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x = i[0]
    pads = _ints(i[1]) if len(i) > 1 and i[1] is not None else a.get("pads", [])
    value = float(i[2].item()) if len(i) > 2 and i[2] is not None and i[2].numel() else a.get("value", 0.0)
    axes = _ints(i[3]) if len(i) > 3 and i[3] is not None else list(range(x.dim()))
    count = len(axes)
    full = [0] * (2 * x.dim())
    for k, axis in enumerate(axes):
        full[axis % x.dim()], full[axis % x.dim() + x.dim()] = pads[k], pads[k + count]
    torch_pads: list[int] = []
    first = min([d for d in range(x.dim()) if full[d] or full[d + x.dim()]], default=x.dim())
    for axis in reversed(range(first, x.dim())):  # torch lists pads from the last axis backwards
        torch_pads += [full[axis], full[axis + x.dim()]]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[a.get("mode", "constant")]
    if mode == "constant":
        return [F.pad(x, torch_pads, value=value)]
    return [F.pad(x, torch_pads, mode=mode)]


@_op("Expand")
def _expand(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    x, shape = i[0], _ints(i[1])
    return [x.expand(torch.broadcast_shapes(x.shape, tuple(shape)))]


@_op("Shape")
def _shape(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    dims = list(i[0].shape)[a.get("start", 0):a.get("end")]
    return [torch.tensor(dims, dtype=torch.int64, device=i[0].device)]


@_op("Size")
def _size(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    return [torch.tensor(i[0].numel(), dtype=torch.int64, device=i[0].device)]


@_op("ConstantOfShape")
def _constant_of_shape(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    value = a.get("value")
    fill = torch.from_numpy(value.reshape(-1)) if value is not None else torch.zeros(1)
    return [fill.to(i[0].device).expand(_ints(i[0])).clone()]


@_op("Range")
def _range(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    start, limit, delta = (t.item() for t in i)
    return [torch.arange(start, limit, delta, dtype=i[0].dtype, device=i[0].device)]


@_op("QuantizeLinear")
def _quantize(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    """Fake quantization: round (straight-through) and clamp to the integer type's range, kept as float.

    ``x / scale`` is rounded before the zero point is added, as ONNX Runtime does (adding first can
    round a tie differently). A ``qat_range`` attribute (QAT graphs only) narrows the clamp, e.g. to
    [-127, 127] for symmetric int8 weights.
    """
    x, scale = i[0], i[1]
    zero = i[2] if len(i) > 2 and i[2] is not None else None
    low, high = a.get("qat_range") or _int_range(zero, a)
    scale, zp = _along(scale, x, a), _along(zero, x, a)
    q = x / scale
    q = q + (torch.round(q) - q).detach()
    if zp is not None:
        q = q + zp.to(x.dtype)
    return [torch.clamp(q, low, high)]


@_op("DequantizeLinear")
def _dequantize(i: list[Any], a: dict[str, Any]) -> list[Tensor]:
    q, scale = i[0], i[1]
    zero = i[2] if len(i) > 2 and i[2] is not None else None
    q = q.to(scale.dtype)
    zp = _along(zero, q, a)
    return [(q - (0.0 if zp is None else zp.to(q.dtype))) * _along(scale, q, a)]


def _along(t: Tensor | None, x: Tensor, a: dict[str, Any]) -> Tensor | None:
    """A per-axis scale or zero point shaped to broadcast along ``axis`` of ``x``."""
    if t is None or t.dim() == 0 or t.numel() == 1 and x.dim() == 0:
        return t
    axis = a.get("axis", 1) % x.dim()
    return t.reshape([-1 if d == axis else 1 for d in range(x.dim())])


_RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int16: (-32768, 32767),
           torch.uint16: (0, 65535), torch.int32: (-(2**31), 2**31 - 1)}


def _int_range(zero: Tensor | None, a: dict[str, Any]) -> tuple[int, int]:
    if zero is not None:
        return _RANGES[zero.dtype]
    if "output_dtype" in a and a["output_dtype"]:
        return _RANGES[a["_dtype"](a["output_dtype"])]
    return _RANGES[torch.uint8]
