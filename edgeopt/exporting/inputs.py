"""Example inputs for an export: ``NAME:DIMS:DTYPE`` specs, ``.npz`` files and dynamic axes.

A spec such as ``image:batchx3x224x224:float32`` names an input, its shape and
its dtype. A dimension that is a name (``batch``) is a dynamic axis with that
label; its example size is 2 (torch.export specializes sizes 0 and 1), or the
number after ``=`` (``batch=4``). Dimensions are separated by ``x``, or by ``,``
when a label contains an ``x`` (``input_ids:batch,max_len:int64``). The dtype
defaults to ``float32``; ``NAME::float32`` is a scalar.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeopt.core.errors import ExportError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
SYMBOLIC_SIZE = 2
"""Example size of a dynamic axis given only by name."""
_LABEL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=(\d+))?$")
_SPEC_HELP = "expected NAME:DIMS[:DTYPE], e.g. image:1x3x224x224:float32 or input_ids:batchxsequence:int64"


@dataclass(frozen=True)
class InputSpec:
    """One example input: its name, example shape, dtype, and which axes are dynamic."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    dynamic: Mapping[int, str]
    """Axis -> label of each dynamic axis."""


def parse_input_spec(spec: str) -> InputSpec:
    """Parse ``NAME:DIMS[:DTYPE]`` (see the module docstring).

    Raises:
        ExportError: the spec is malformed; the message quotes it and shows the form.
    """
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0].isidentifier():
        raise ExportError(f"--input '{spec}': {_SPEC_HELP}.")
    name, dims = parts[0], parts[1].strip()
    dtype_name = parts[2].strip() if len(parts) == 3 and parts[2].strip() else "float32"
    if dtype_name not in DTYPES:
        raise ExportError(f"--input '{spec}': unknown dtype '{dtype_name}'; use one of {', '.join(DTYPES)}.")
    shape: list[int] = []
    dynamic: dict[int, str] = {}
    for axis, dim in enumerate(dims.split("," if "," in dims else "x") if dims else []):
        dim = dim.strip()
        label = _LABEL.match(dim)
        if dim.isdigit():
            shape.append(int(dim))
        elif label:
            dynamic[axis] = label.group(1)
            shape.append(int(label.group(2) or SYMBOLIC_SIZE))
        else:
            raise ExportError(f"--input '{spec}': dimension {axis} is '{dim}', neither a size nor a "
                              f"label (a name, optionally =SIZE); {_SPEC_HELP}.")
    return InputSpec(name, tuple(shape), DTYPES[dtype_name], dynamic)


def parse_dynamic(spec: str) -> tuple[str, int, str]:
    """Parse ``NAME:AXIS[:LABEL]`` into ``(name, axis, label)``; the label defaults to ``NAME_AXIS``."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0].isidentifier() or not parts[1].isdigit() \
            or (len(parts) == 3 and not parts[2].isidentifier()):
        raise ExportError(f"--dynamic '{spec}': expected NAME:AXIS[:LABEL], e.g. image:0:batch.")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else f"{parts[0]}_{parts[1]}"


def random_inputs(
    specs: Sequence[InputSpec], *, seed: int = 0, int_ranges: Mapping[str, tuple[int, int]] | None = None
) -> dict[str, torch.Tensor]:
    """Random tensors for ``specs``: floats ~ N(0, 1); integers in ``int_ranges[name]`` (low, high
    exclusive; default ``[0, 2)``); bools either value."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for spec in specs:
        if spec.name in tensors:
            raise ExportError(f"--input '{spec.name}' is given twice.")
        if spec.dtype.is_floating_point:
            value = torch.randn(spec.shape, generator=generator).to(spec.dtype)
        else:
            low, high = (int_ranges or {}).get(spec.name, (0, 2))
            value = torch.randint(low, high, spec.shape, generator=generator).to(spec.dtype)
        tensors[spec.name] = value
    return tensors


def load_examples(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The arrays of an ``.npz`` file as tensors, keyed by input name, in file order.

    Raises:
        ExportError: the file is missing, not an ``.npz``, empty, or holds non-numeric arrays.
    """
    file = Path(path).resolve()
    if not file.is_file():
        raise ExportError(f"{file}: example file does not exist. Check the path.")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ExportError(f"{file}: not a readable .npz file ({e}). Write it with numpy.savez(path, "
                          "NAME=array, ...).") from e
    except AttributeError as e:  # np.load returned a bare array (.npy)
        raise ExportError(f"{file}: a single array, not an .npz of named inputs. Write it with "
                          "numpy.savez(path, NAME=array, ...).") from e
    if not arrays:
        raise ExportError(f"{file}: holds no arrays; write one per input with numpy.savez(path, NAME=array).")
    tensors: dict[str, torch.Tensor] = {}
    for key, array in arrays.items():
        if array.dtype.kind not in "fiub":
            raise ExportError(f"{file}: array '{key}' has dtype {array.dtype}; inputs must be numeric or bool.")
        tensors[key] = torch.from_numpy(np.ascontiguousarray(array))
    return tensors


def dynamic_axes(
    specs: Sequence[InputSpec], extra: Sequence[str] = (), names: Sequence[str] | None = None
) -> dict[str, dict[int, str]]:
    """Input -> {axis: label}: the labelled dims of ``specs`` plus ``--dynamic`` specs in ``extra``.

    Args:
        specs: Parsed ``--input`` specs.
        extra: ``NAME:AXIS[:LABEL]`` strings.
        names: The inputs that exist; an ``extra`` naming another input is an error.
    """
    axes: dict[str, dict[int, str]] = {s.name: dict(s.dynamic) for s in specs if s.dynamic}
    for spec in extra:
        name, axis, label = parse_dynamic(spec)
        if names is not None and name not in names:
            raise ExportError(f"--dynamic '{spec}': no input named '{name}'; the inputs are {', '.join(names)}.")
        axes.setdefault(name, {})[axis] = label
    return axes
