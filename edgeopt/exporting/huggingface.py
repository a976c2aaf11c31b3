"""Hugging Face model folders (``config.json`` + weights) as exportable torch modules.

Needs the optional ``transformers`` package (``pip install edgeopt[hf]``). The
model loads with ``AutoModel.from_pretrained(folder, local_files_only=True)``:
nothing is downloaded. Its ``forward`` takes keyword inputs and returns a
``ModelOutput``; :func:`keyword_adapter` turns that into positional tensors in and
a tuple out, which both exporters and the numeric check need.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgeopt.core.errors import BackendNotInstalledError, ModelLoadError
from edgeopt.exporting.check import root_reason
from edgeopt.exporting.inputs import SYMBOLIC_SIZE

logger = logging.getLogger(__name__)

TEXT_SEQUENCE = 8
"""Example sequence length of a text model's default inputs."""


def load_folder(folder: Path) -> torch.nn.Module:
    """``AutoModel.from_pretrained(folder)``, local files only, in eval mode.

    Raises:
        BackendNotInstalledError: transformers is not installed.
        ModelLoadError: transformers cannot build the model from the folder.
    """
    if importlib.util.find_spec("transformers") is None:
        raise BackendNotInstalledError(
            f"{folder}: a Hugging Face model folder needs transformers. Install it: pip install 'edgeopt[hf]'"
        )
    hide_broken_torchvision()
    import transformers

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # the library never prints
    try:
        model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError, ...)
        raise ModelLoadError(
            f"{folder}: transformers cannot load this folder as a model ({root_reason(e)})."
        ) from e
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    return model.eval()


def hide_broken_torchvision() -> None:
    """Hide an installed torchvision that fails to import (e.g. built for another torch).

    transformers imports torchvision whenever it is installed, so a broken one breaks
    every model class; with ``sys.modules["torchvision"] = None`` it counts as absent.
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # its C++ extension raises RuntimeError, OSError, ...
        logger.info("torchvision does not import (%s); hiding it from transformers", root_reason(e))
        sys.modules["torchvision"] = None  # type: ignore[assignment]
        checks = sys.modules.get("transformers.utils.import_utils")  # an import may have cached the answer
        for name in ("is_torchvision_available", "is_torchvision_v2_available"):
            clear = getattr(getattr(checks, name, None), "cache_clear", None)
            if clear is not None:
                clear()


def default_inputs(model: torch.nn.Module) -> dict[str, tuple[tuple[int | str, ...], torch.dtype]]:
    """Name -> (shape, dtype) of example inputs derived from the config; str dims are dynamic.

    Text models (a ``vocab_size``) get ``input_ids`` and, if ``forward`` takes one,
    ``attention_mask``: int64 ``(batch, sequence)``. Vision models (``image_size``)
    get float32 ``pixel_values``. Anything else needs explicit inputs.

    Raises:
        ModelLoadError: the config says neither.
    """
    config = getattr(model, "config", None)
    params = _forward_params(model)
    if getattr(config, "vocab_size", None) and "input_ids" in params:
        shape: tuple[int | str, ...] = ("batch", "sequence")
        names = ["input_ids", *(["attention_mask"] if "attention_mask" in params else [])]
        return {name: (shape, torch.int64) for name in names}
    size = getattr(config, "image_size", None)
    if isinstance(size, int) and "pixel_values" in params:
        channels = int(getattr(config, "num_channels", 3))
        return {"pixel_values": (("batch", channels, size, size), torch.float32)}
    raise ModelLoadError(
        f"cannot derive example inputs from a {type(model).__name__} config (no vocab_size or image_size). "
        "Give them: --input NAME:DIMS:DTYPE or --example FILE.npz."
    )


def int_ranges(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """Value ranges (low, high exclusive) of integer inputs: ids below the vocabulary size, masks of ones."""
    config = getattr(model, "config", None)
    ranges = {"attention_mask": (1, 2), "token_type_ids": (0, int(getattr(config, "type_vocab_size", 1) or 1))}
    vocab = getattr(config, "vocab_size", None)
    if vocab:
        ranges["input_ids"] = (0, int(vocab))
    return ranges


def example_size(dim: int | str) -> int:
    return dim if isinstance(dim, int) else (TEXT_SEQUENCE if dim == "sequence" else SYMBOLIC_SIZE)


class _KeywordAdapter(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.model(**dict(zip(self.names, inputs, strict=True)), return_dict=False)


def keyword_adapter(model: torch.nn.Module, names: Sequence[str]) -> torch.nn.Module:
    """Wrap ``model`` so that ``forward(*tensors)`` calls it with ``names`` as keywords and returns a tuple.

    The wrapper's ``forward`` has the signature ``(name0, name1, ...)``, which
    torch.export reads to match ``dynamic_shapes`` to inputs.

    Raises:
        ModelLoadError: a name is not a parameter of the model's ``forward``.
    """
    params = _forward_params(model)
    unknown = [n for n in names if n not in params]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise ModelLoadError(f"{type(model).__name__}.forward has no input {', '.join(map(repr, unknown))}; "
                             f"it takes {', '.join(list(params)[:8])}.")
    P = inspect.Parameter
    signature = inspect.Signature([P("self", P.POSITIONAL_OR_KEYWORD),
                                   *(P(n, P.POSITIONAL_OR_KEYWORD) for n in names)])
    forward = _KeywordAdapter.forward

    def typed_forward(self: _KeywordAdapter, *inputs: torch.Tensor) -> Any:
        return forward(self, *inputs)

    typed_forward.__signature__ = signature  # type: ignore[attr-defined]
    cls = type(f"{type(model).__name__}Adapter", (_KeywordAdapter,), {"forward": typed_forward})
    return cls(model, names)


def output_names(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[str] | None:
    """The ``ModelOutput`` keys the model returns for ``inputs`` (``None`` if it returns no mapping)."""
    with torch.no_grad():
        output = model(**inputs)
    keys = getattr(output, "keys", None)
    return [str(k) for k in keys() if output[k] is not None] if callable(keys) else None


def _forward_params(model: torch.nn.Module) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return {}
