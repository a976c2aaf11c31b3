"""Where a torch model comes from: a TorchScript file, an ExportedProgram, a factory or a Hugging Face folder.

:func:`load_source` turns the string a user types into a :class:`TorchSource`:

- a TorchScript file (``torch.jit.save``; exports with the TorchScript exporter only);
- an ExportedProgram file (``torch.export.save``, usually ``.pt2``);
- a factory ``package.module:callable`` returning an ``nn.Module``, the module
  imported from the current folder or ``PYTHONPATH``;
- a Hugging Face model folder (``config.json`` + weights; needs ``edgeopt[hf]``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from edgeopt.core.errors import ModelLoadError
from edgeopt.exporting import huggingface
from edgeopt.exporting.check import root_reason

SourceKind = Literal["torchscript", "exported-program", "factory", "huggingface"]
_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_KINDS = ("a TorchScript file (torch.jit.save), an ExportedProgram (torch.export.save, .pt2), "
          "a factory package.module:callable or a Hugging Face model folder")


@dataclass(frozen=True)
class TorchSource:
    """A loaded torch model and what its source says about its inputs."""

    kind: SourceKind
    location: str
    """Absolute path, or ``package.module:callable``."""
    module: torch.nn.Module
    forward_names: tuple[str, ...] | None = None
    """``forward``'s positional parameters, when known: inputs are passed in this order."""
    examples: Mapping[str, torch.Tensor] | None = None
    """Example inputs the source carries (an ExportedProgram's), used when none are given."""
    default_inputs: Mapping[str, tuple[tuple[int | str, ...], torch.dtype]] | None = None
    """Name -> (shape, dtype) of derived example inputs (a Hugging Face config's); str dims are dynamic."""
    int_ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Value ranges (low, high exclusive) of integer inputs, e.g. token ids below the vocabulary size."""
    adapter: Callable[[torch.nn.Module, Sequence[str]], torch.nn.Module] | None = None
    """Builds the module to export from the input names (keyword-input models)."""

    def module_for(self, names: Sequence[str]) -> torch.nn.Module:
        """The module to export when its inputs are ``names`` (in that order)."""
        return self.adapter(self.module, names) if self.adapter else self.module


def detect_kind(source: str) -> SourceKind:
    """What ``source`` names, from the file system (and a file's zip contents) or the factory form.

    Raises:
        ModelLoadError: the path does not exist, or it is none of the four kinds.
    """
    path = Path(source)
    if path.is_dir():
        if (path / "config.json").is_file():
            return "huggingface"
        raise ModelLoadError(f"{path.resolve()}: a folder without config.json; a model folder "
                             "is what save_pretrained() writes.")
    if path.is_file():
        return _file_kind(path)
    if _FACTORY.match(source):
        return "factory"
    raise ModelLoadError(f"{path.resolve()}: does not exist. SOURCE is {_KINDS}.")


def _file_kind(path: Path) -> SourceKind:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        names = []
    if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        return "exported-program"
    if any("/code/" in n or n.startswith("code/") for n in names):
        return "torchscript"
    what = "a torch.save checkpoint (pickled module or state dict)" if any(
        n.endswith("data.pkl") for n in names) else "not a torch archive"
    raise ModelLoadError(f"{path.resolve()}: {what}. SOURCE is {_KINDS}; for a state dict, write a "
                         "factory that builds the module and loads it.")


def load_source(source: str) -> TorchSource:
    """Load ``source`` (see the module docstring) as an ``nn.Module``.

    Raises:
        ModelLoadError: missing or unrecognized source, or loading it failed.
        BackendNotInstalledError: a Hugging Face folder without transformers installed.
    """
    kind = detect_kind(source)
    if kind == "factory":
        return _load_factory(source)
    path = Path(source).resolve()
    if kind == "huggingface":
        model = huggingface.load_folder(path)
        return TorchSource(kind, str(path), model, default_inputs=huggingface.default_inputs(model),
                           int_ranges=huggingface.int_ranges(model), adapter=huggingface.keyword_adapter)
    if kind == "torchscript":
        try:
            script = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise ModelLoadError(f"{path}: torch.jit.load failed ({root_reason(e)}).") from e
        return TorchSource(kind, str(path), script, forward_names=_forward_names(script))
    return _load_exported_program(path)


def _load_exported_program(path: Path) -> TorchSource:
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: torch.export.load failed ({root_reason(e)}).") from e
    module = program.module()
    # The graph is fixed at torch.export time; train()/eval() would only flip flags, which
    # ExportedProgram.module() forbids by overriding them on the instance. Restore nn.Module's.
    for method in ("train", "eval"):
        module.__dict__.pop(method, None)
    names = _forward_names(module)
    examples = None
    args, kwargs = program.example_inputs or ((), {})
    if names and not kwargs and len(args) == len(names) and all(isinstance(a, torch.Tensor) for a in args):
        examples = dict(zip(names, args, strict=True))
    return TorchSource("exported-program", str(path), module, forward_names=names, examples=examples)


def _load_factory(source: str) -> TorchSource:
    module_name, _, attribute = source.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # the console script's sys.path lacks the current folder
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise ModelLoadError(f"{source}: cannot import '{module_name}' ({root_reason(e)}); it is imported "
                             f"from the current folder ({cwd}) or PYTHONPATH.") from e
    finally:
        if added:
            sys.path.remove(cwd)
    factory: object = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise ModelLoadError(f"{source}: module '{module_name}' ({getattr(module, '__file__', '?')}) "
                                 f"has no '{attribute}'.")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelLoadError(f"{source}: '{attribute}' is a {type(factory).__name__}, not a callable.")
    try:
        built = factory()
    except Exception as e:
        raise ModelLoadError(f"{source}: calling {attribute}() failed ({root_reason(e)}). A factory "
                             "takes no arguments and returns an nn.Module.") from e
    if not isinstance(built, torch.nn.Module):
        raise ModelLoadError(f"{source}: {attribute}() returned a {type(built).__name__}, not a torch.nn.Module.")
    return TorchSource("factory", source, built, forward_names=_forward_names(built))


def _forward_names(module: torch.nn.Module) -> tuple[str, ...] | None:
    """Positional parameters of ``forward``; ``None`` when it takes ``*args`` or has no signature."""
    if isinstance(module, torch.jit.ScriptModule):  # its schema's first argument is self
        schema = getattr(module.forward, "schema", None)
        return tuple(a.name for a in schema.arguments[1:]) if schema is not None else None
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)
