"""A corpus of bad inputs that every verb must answer with one line and exit 1.

Broken model files (corrupt, truncated, empty, not ONNX, an IR or opset nobody
knows, an op of an unknown domain, a reference to an undefined value, NaN/Inf
weights) and broken calibration data (a wrong input name, shape or dtype, a
corrupt ``.npz``, an empty folder). Each case writes its file (or folder) and
says, as a regular expression, what the error message must mention.

The good model they start from is :func:`good_model`: ``x[N, 32]`` through two
residual MLP blocks to ``logits[N, 10]``, small enough for every verb to run
on it in well under a second. :func:`text_encoder` is a good model that random
integer inputs break (token type ids index a table of two rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper as nh

from edgeopt.testing.residual_models import residual_mlp

WIDTH = 32
"""Features of the good model's input ``x``."""


@dataclass(frozen=True)
class BadInput:
    """One bad input: ``write(folder)`` creates it inside ``folder`` and returns its path."""

    name: str
    write: Callable[[Path], Path]
    mentions: str
    """A regular expression (case-insensitive) that the one-line error must match."""


def good_model() -> onnx.ModelProto:
    """The model every bad model is made from: ``x[N, 32] -> 2 residual blocks -> logits[N, 10]``."""
    return residual_mlp(2, width=WIDTH)


def write_good_model(folder: Path) -> Path:
    """Write :func:`good_model` as ``folder/good.onnx``."""
    path = folder / "good.onnx"
    onnx.save(good_model(), path)
    return path


def text_encoder(vocab: int = 50, width: int = 64) -> onnx.ModelProto:
    """A BERT-style embedding layer that random token ids break: ``token_type_ids`` index a table of 2 rows.

    ``(input_ids, attention_mask, token_type_ids)[N, S] -> (E[input_ids] + T[token_type_ids]) * mask @ W``.
    """
    rng = np.random.default_rng(0)
    ids = [helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["N", "S"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["words"], name="word_embeddings"),
             helper.make_node("Gather", ["T", "token_type_ids"], ["types"], name="token_type_embeddings"),
             helper.make_node("Add", ["words", "types"], ["embedded"], name="add"),
             helper.make_node("Unsqueeze", ["attention_mask", "axis"], ["mask3"], name="unsqueeze"),
             helper.make_node("Cast", ["mask3"], ["maskf"], name="cast", to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["embedded", "maskf"], ["masked"], name="mask"),
             helper.make_node("MatMul", ["masked", "W"], ["hidden"], name="dense")]
    inits = [nh.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "E"),
             nh.from_array(rng.standard_normal((2, width)).astype(np.float32), "T"),
             nh.from_array(np.array([2], np.int64), "axis"),
             nh.from_array((rng.standard_normal((width, width)) / 8).astype(np.float32), "W")]
    graph = helper.make_graph(nodes, "text_encoder", ids, [
        helper.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, ["N", "S", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    path = folder / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())  # no checker: these models are broken on purpose
    return path


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / f"{name}.onnx"
        path.write_bytes(data)
        return path

    return write


def _corrupt(folder: Path) -> Path:
    data = bytearray(good_model().SerializeToString())
    data[:64] = b"\xff" * 64  # the header is unreadable
    return _bytes("corrupt", bytes(data))(folder)


def _truncated(folder: Path) -> Path:
    data = good_model().SerializeToString()
    return _bytes("truncated", data[: len(data) // 2 + 7])(folder)


def _ir_version(folder: Path) -> Path:
    model = good_model()
    model.ir_version = 99
    return _save(model, folder, "ir99")


def _opset(folder: Path) -> Path:
    model = good_model()
    model.opset_import[0].version = 99
    return _save(model, folder, "opset99")


def _unknown_domain(folder: Path) -> Path:
    model = good_model()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Foo", "com.acme"
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    return _save(model, folder, "unknown_domain")


def _undefined_reference(folder: Path) -> Path:
    model = good_model()
    add = next(n for n in model.graph.node if n.op_type == "Add")
    add.input[1] = "ghost"
    return _save(model, folder, "undefined_reference")


def _bad_weights(name: str, value: float) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        model = good_model()
        weight = model.graph.initializer[0]
        array = nh.to_array(weight).copy()
        array.flat[::3] = value
        weight.CopyFrom(nh.from_array(array, weight.name))
        return _save(model, folder, name)

    return write


BAD_MODELS: tuple[BadInput, ...] = (
    BadInput("corrupt", _corrupt, r"not a valid ONNX model"),
    BadInput("truncated", _truncated, r"truncated|not a valid ONNX model"),
    BadInput("empty", _bytes("empty", b""), r"empty"),
    BadInput("text", _bytes("text", b"this is a text file, not a model\n"), r"not a valid ONNX model"),
    BadInput("ir-version-99", _ir_version, r"IR version 99"),
    BadInput("opset-99", _opset, r"opset 99"),
    BadInput("unknown-domain", _unknown_domain, r"com\.acme"),
    BadInput("undefined-reference", _undefined_reference, r"'ghost'.*nothing in the graph defines"),
    BadInput("nan-weights", _bad_weights("nan_weights", np.nan), r"NaN"),
    BadInput("inf-weights", _bad_weights("inf_weights", np.inf), r"Inf"),
)
"""Broken model files, each answered with one line."""


def _npz(name: str, arrays: dict[str, np.ndarray]) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        data = folder / name
        data.mkdir()
        np.savez(data / "0.npz", **arrays)  # type: ignore[arg-type]
        return data

    return write


def _corrupt_npz(folder: Path) -> Path:
    data = folder / "corrupt_npz"
    data.mkdir()
    (data / "0.npz").write_bytes(b"PK\x03\x04 not really a zip archive")
    return data


def _empty_dir(folder: Path) -> Path:
    data = folder / "empty_dir"
    data.mkdir()
    return data


_rows = np.random.default_rng(0).standard_normal((2, WIDTH))

BAD_DATA: tuple[BadInput, ...] = (
    BadInput("wrong-name", _npz("wrong_name", {"input": _rows.astype(np.float32)}), r"'x'.*'input'|'input'.*'x'"),
    BadInput("wrong-shape", _npz("wrong_shape", {"x": _rows[:, :16].astype(np.float32)}), r"input 'x'.*dim 1"),
    BadInput("wrong-dtype", _npz("wrong_dtype", {"x": _rows}), r"input 'x'.*dtype float64"),
    BadInput("corrupt-npz", _corrupt_npz, r"cannot read"),
    BadInput("empty-dir", _empty_dir, r"no calibration data|no \.npy/\.npz files"),
)
"""Broken calibration data for :func:`good_model`, each answered with one line."""
