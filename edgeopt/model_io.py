"""Load ONNX models into the IR and save them back, safely.

Loading checks that the file exists and parses, and that every external-data
location stays inside the model's folder. Saving is atomic (everything is
written into a temporary folder next to the destination, then renamed into
place), switches to external data automatically above protobuf's 2 GB limit,
and refuses to overwrite the model it was loaded from unless asked to.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import google.protobuf.message
import onnx
import onnx_ir as ir

from edgeopt.errors import ModelLoadError, ModelSaveError

logger = logging.getLogger(__name__)

SOURCE_PATH_KEY = "edgeopt.source_path"
"""``model.meta`` key holding the absolute path a model was loaded from."""

PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Tensors take most of a model's bytes; keep a margin for the graph itself.
_EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT_BYTES - 64 * 2**20

ModelSource = str | os.PathLike[str] | onnx.ModelProto | ir.Model | bytes


def load_model(source: ModelSource) -> ir.Model:
    """Load a model from a path, serialized bytes, a ``ModelProto`` or an IR model.

    Raises:
        ModelLoadError: the file is missing or not ONNX, or external data is
            missing or points outside the model's folder.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, onnx.ModelProto):
        return ir.serde.deserialize_model(source)
    if isinstance(source, bytes):
        return ir.serde.deserialize_model(_parse(source, "<bytes>"))
    path = Path(source).resolve()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModelLoadError(f"{path}: model file {what}. Check the path.")
    proto = _parse(path.read_bytes(), str(path))
    _check_external_data(proto, path)
    model = ir.serde.deserialize_model(proto)
    ir.external_data.set_base_dir(model.graph, path.parent)
    model.meta[SOURCE_PATH_KEY] = str(path)
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (google.protobuf.message.DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(
            f"{where}: not a valid ONNX model (protobuf parse failed: {e}). "
            "The file may be truncated or not ONNX; re-export or re-download it."
        ) from e
    if not proto.HasField("graph"):
        raise ModelLoadError(
            f"{where}: not a valid ONNX model (no graph found). "
            "The file may be truncated or not ONNX; re-export or re-download it."
        )
    return proto


def _iter_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _iter_tensor_protos(attr.g)
            for sub in attr.graphs:
                yield from _iter_tensor_protos(sub)


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    base = path.parent
    for tensor in _iter_tensor_protos(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' points to external data at '{location}', "
                f"outside the model's folder {base}. Refusing to read it; move the data file "
                "next to the model and fix its location."
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{target}: external data file of tensor '{tensor.name}' does not exist. "
                "Copy it next to the model."
            )


def tensor_bytes(model: ir.Model) -> int:
    """Bytes held by the initializers and constant tensors of every graph in ``model``."""
    total = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.TENSOR:
                total += attr.as_tensor().nbytes
            elif attr.type == ir.AttributeType.GRAPH:
                graph = attr.as_graph()
                total += sum(v.const_value.nbytes for v in graph.initializers.values() if v.const_value)
    return total


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    overwrite_input: bool = False,
) -> Path:
    """Write ``model`` to ``path`` atomically and return the absolute path.

    Args:
        model: The model to write.
        path: Destination ``.onnx`` file; its folder is created if needed.
        external_data: Store tensors in ``<name>.data`` beside the model. ``None``
            (the default) does so only when the model would exceed protobuf's 2 GB.
        overwrite_input: Allow writing over the file the model was loaded from.

    Raises:
        ModelSaveError: the destination is the input model, or writing failed.
            Nothing is left half-written at the destination either way.
    """
    dest = Path(path).resolve()
    source = model.meta.get(SOURCE_PATH_KEY)
    if source is not None and Path(source) == dest and not overwrite_input:
        raise ModelSaveError(
            f"{dest}: refusing to overwrite the input model. Write to another path "
            "(-o OUT), or pass --in-place / overwrite_input=True."
        )
    if external_data is None:
        external_data = tensor_bytes(model) > _EXTERNAL_DATA_THRESHOLD
    data_name = dest.name + ".data"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as e:
        raise ModelSaveError(f"{dest}: cannot create the output folder ({e}).") from e
    try:
        if not external_data:
            # Tensors still lazily read from the source's data file would otherwise be
            # written as references relative to the new folder.
            ir.external_data.load_to_model(model)
        ir.save(model, staging / dest.name, external_data=data_name if external_data else None)
        if external_data:
            os.replace(staging / data_name, dest.parent / data_name)
        os.replace(staging / dest.name, dest)
    except (OSError, ValueError, google.protobuf.message.EncodeError) as e:
        raise ModelSaveError(f"{dest}: writing the model failed ({e}); nothing was written.") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved %s (%s)", dest, "external data" if external_data else "single file")
    return dest


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize ``model`` to a ``ModelProto`` (external tensors stay references)."""
    return ir.serde.serialize_model(model)
