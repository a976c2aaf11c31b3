"""What a ``.tflite`` artifact holds and how to feed it: I/O mapping, metadata, interpreter runs.

onnx2tf renames nothing (its names are the ONNX names) but transposes 4-D
image inputs to NHWC and may transpose outputs too. The worker finds out which,
by running the ONNX model and the float32 ``.tflite`` on the same random input,
and embeds the mapping in every artifact as a TFLite metadata entry
(``edgeopt_io``: ``{"inputs"|"outputs": [{name, onnx_name, perm}]}``, where
``native = onnx.transpose(perm)``), so an artifact file is self-describing.
Only numpy, flatbuffers and ``ai_edge_litert`` are needed here: no TensorFlow.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.core.errors import BackendNotInstalledError, ModelLoadError
from edgeopt.core.runtime import Feeds

METADATA_NAME = "edgeopt_io"
FLOAT_FILES = {"float32": "model_float32.tflite", "float16": "model_float16.tflite",
               "dynamic_int8": "model_dynamic_int8.tflite"}
INSTALL_HINT = 'pip install -e ".[tflite]" && pip install --no-deps onnx2tf==1.29.24'
_NHWC = (0, 2, 3, 1)


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as e:
        raise BackendNotInstalledError(f"TFLite targets need ai-edge-litert. Install it: {INSTALL_HINT}") from e
    return schema_py_generated


def embed_io(source: Path, dest: Path, mapping: dict[str, Any]) -> None:
    """Copy ``source`` to ``dest`` with ``mapping`` as the ``edgeopt_io`` metadata entry."""
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(Path(source).read_bytes(), 0)
    model.buffers.append(schema.BufferT())
    model.buffers[-1].data = np.frombuffer(json.dumps(mapping).encode(), np.uint8)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    Path(dest).write_bytes(bytes(builder.Output()))


def read_io(artifact: Path) -> dict[str, Any]:
    """The ``edgeopt_io`` mapping of an artifact edgeopt wrote."""
    model = _root(Path(artifact))
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            return dict(json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()))
    raise ModelLoadError(
        f"{Path(artifact).resolve()}: no edgeopt I/O metadata; export it with an edgeopt tflite target.")


def _root(artifact: Path) -> Any:
    try:
        data = artifact.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{artifact.resolve()}: cannot read the TFLite artifact ({e}).") from e
    return _schema().Model.GetRootAs(data, 0)


def tensor_types(artifact: Path) -> dict[str, list[str]]:
    """Tensor type names of the artifact: ``constants`` (with data, in every subgraph: control-flow
    bodies included) and ``io`` (the main graph's inputs/outputs)."""
    schema, model = _schema(), _root(Path(artifact))
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    constants, io = [], []
    for index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(index)
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            if model.Buffers(tensor.Buffer()).DataLength() > 0:
                constants.append(names[tensor.Type()])
    main = model.Subgraphs(0)
    for i in [*main.InputsAsNumpy(), *main.OutputsAsNumpy()]:
        io.append(names[main.Tensors(int(i)).Type()])
    return {"constants": constants, "io": io}


def float_ops(artifact: Path) -> list[tuple[str, str]]:
    """``(op, output tensor)`` of every operator, in every subgraph, that reads or writes a float tensor.

    Subgraphs past the main one (WHILE / IF bodies) name their tensors ``<subgraph name>/<tensor>``.
    """
    schema, model = _schema(), _root(Path(artifact))
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    floats = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16}
    found = []
    for index in range(model.SubgraphsLength()):
        graph = model.Subgraphs(index)
        prefix = f"{(graph.Name() or b'').decode() or f'subgraph{index}'}/" if index else ""
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            tensors = [int(t) for t in (*op.InputsAsNumpy(), *op.OutputsAsNumpy()) if t >= 0]
            if any(graph.Tensors(t).Type() in floats for t in tensors):
                output = graph.Tensors(int(op.OutputsAsNumpy()[0])).Name().decode() if op.OutputsLength() else "?"
                found.append((builtin.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"),
                              prefix + output))
    return found


@functools.lru_cache(maxsize=8)
def _interpreter(path: str, mtime_ns: int) -> Any:
    del mtime_ns  # part of the cache key: a rewritten artifact gets a new interpreter
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise BackendNotInstalledError(f"TFLite targets need ai-edge-litert. Install it: {INSTALL_HINT}") from e
    return Interpreter(model_path=path, num_threads=os.cpu_count() or 1)


def signature_runner(artifact: Path) -> Any:
    path = Path(artifact).resolve()
    if not path.is_file():
        raise ModelLoadError(f"{path}: TFLite artifact not found.")
    return _interpreter(str(path), path.stat().st_mtime_ns).get_signature_runner()


def run_tflite(artifact: Path, feeds: Feeds) -> Feeds:
    """Run native feeds (signature names) through the LiteRT interpreter.

    Artifacts have static shapes; a feed whose row count differs from the artifact's
    batch runs one batch at a time (the last one padded by repeating its last row)
    and the outputs are concatenated along axis 0, padding dropped.
    """
    runner = signature_runner(artifact)
    details = runner.get_input_details()
    batch = {name: int(d["shape"][0]) if len(d["shape"]) else 0 for name, d in details.items()}
    rows = {len(v) if np.ndim(v) else 0 for v in feeds.values()}
    step = min(batch.values(), default=0)
    if len(rows) != 1 or step < 1 or next(iter(rows)) == step:
        return {k: np.array(v) for k, v in runner(**{n: np.asarray(a) for n, a in feeds.items()}).items()}
    total = next(iter(rows))
    parts = []
    for start in range(0, total, step):
        chunk = {n: np.asarray(a)[start:start + step] for n, a in feeds.items()}
        real = len(next(iter(chunk.values())))
        chunk = {n: np.concatenate([a, np.repeat(a[-1:], step - real, axis=0)]) for n, a in chunk.items()}
        parts.append({k: np.array(v)[:real] for k, v in runner(**chunk).items()})
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def quant_params(detail: dict[str, Any]) -> tuple[float | None, int | None]:
    scale, zero_point = detail["quantization"]
    return (float(scale), int(zero_point)) if scale else (None, None)


def quantize(array: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(np.asarray(array, np.float32) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((np.asarray(array).astype(np.float32) - zero_point) * scale).astype(np.float32)


def io_mapping_from_probe(onnx_path: str, tflite_path: Path, shapes: dict[str, list[int]]) -> dict[str, Any]:
    """Match a ``.tflite`` file's I/O to the ONNX model's: inputs by name and shape, outputs by value.

    Both run on the same random input; each ONNX output is matched to the native
    output (and transpose) closest to it, so renamed or reordered outputs are found.
    """
    import onnx_ir as ir

    from edgeopt.core.runtime import random_feeds, run_model

    model = ir.load(onnx_path)
    dims = {str(d.value): 1 for v in model.graph.inputs for d in (v.shape or ()) if not isinstance(d, int)}
    feeds = random_feeds(model, seed=0, dims=dims)
    # Integers in [0, 2): valid indices even for BERT's 2-row token-type table (random_feeds gives [0, 4)).
    feeds = {k: np.asarray(v if v.dtype.kind not in "iu" else v % 2).reshape(shapes.get(k, v.shape))
             for k, v in feeds.items()}
    expected = run_model(model, feeds)
    runner = signature_runner(tflite_path)
    in_details, out_details = runner.get_input_details(), runner.get_output_details()
    inputs = _match_names(list(feeds), list(in_details))
    in_specs: list[dict[str, Any]] = [{"name": inputs[k], "onnx_name": k,
                 "perm": _input_perm(v.shape, tuple(int(s) for s in in_details[inputs[k]]["shape"]))}
                for k, v in feeds.items()]
    native: Feeds = {}
    for spec in in_specs:
        array, detail = np.transpose(feeds[spec["onnx_name"]], spec["perm"]), in_details[spec["name"]]
        scale, zero_point = quant_params(detail)
        dtype = np.dtype(detail["dtype"])
        native[spec["name"]] = (quantize(array, scale, zero_point or 0, dtype) if scale and dtype.kind in "iu"
                                else array.astype(dtype))
    got = {}
    for name, array in runner(**native).items():
        scale, zero_point = quant_params(out_details[name])
        got[name] = dequantize(array, scale, zero_point or 0) if scale else np.asarray(array)
    out_specs: list[dict[str, Any]] = []
    for onnx_name, value in expected.items():
        name, perm = _closest(value, {n: a for n, a in got.items() if n not in {s["name"] for s in out_specs}})
        out_specs.append({"name": name, "onnx_name": onnx_name, "perm": perm})
    return {"inputs": in_specs, "outputs": out_specs}


def _closest(expected: np.ndarray, candidates: dict[str, np.ndarray]) -> tuple[str, list[int]]:
    import itertools

    best: tuple[float, str, list[int]] | None = None
    for name, got in candidates.items():
        perms = itertools.permutations(range(expected.ndim)) if expected.ndim <= 5 else [tuple(range(expected.ndim))]
        for perm in perms:
            if tuple(expected.shape[i] for i in perm) != got.shape:
                continue
            error = float(np.abs(np.transpose(expected, perm).astype(np.float64) - got).max(initial=0.0))
            if best is None or error < best[0]:
                best = (error, name, list(perm))
    if best is None:
        raise ModelLoadError(f"no TFLite output has the shape {list(expected.shape)} of an ONNX output; "
                             f"the converted outputs are {[list(a.shape) for a in candidates.values()]}.")
    return best[1], best[2]


def _match_names(onnx_names: list[str], native: list[str]) -> dict[str, str]:
    if set(onnx_names) <= set(native):
        return {n: n for n in onnx_names}
    if len(onnx_names) != len(native):
        raise ModelLoadError(f"the TFLite model has I/O {native}, the ONNX model {onnx_names}; cannot match them.")
    return dict(zip(onnx_names, native, strict=True))


def _input_perm(shape: tuple[int, ...], native: tuple[int, ...]) -> list[int]:
    if len(shape) == 4 and tuple(shape[i] for i in _NHWC) == native and tuple(shape) != native:
        return list(_NHWC)
    return list(range(len(shape)))


def layout_of(perm: list[int]) -> str | None:
    """The artifact-side layout name of a 4-D tensor (``NHWC`` when transposed from NCHW)."""
    if len(perm) != 4:
        return None
    return "NHWC" if tuple(perm) == _NHWC else "NCHW" if perm == [0, 1, 2, 3] else None
