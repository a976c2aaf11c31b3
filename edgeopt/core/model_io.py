"""Load ONNX models into the IR and save them back, safely.

Loading checks that the file exists and parses, and that every external-data
location (in the graph, its subgraphs and the model's functions) stays inside the
model's folder. Saving writes everything into a temporary folder next to the
destination and then renames it into place, the model file last; it switches to
external data automatically above protobuf's 2 GB limit, and refuses to overwrite
the model it was loaded from, or any data file that model reads, unless asked to.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import google.protobuf.message
import onnx
import onnx_ir as ir

from edgeopt.core.errors import ModelLoadError, ModelSaveError
from edgeopt.core.references import undefined_reads

logger = logging.getLogger(__name__)

SOURCE_PATH_KEY = "edgeopt.source_path"
"""``model.meta`` key holding the absolute path a model was loaded from."""

SOURCE_FILES_KEY = "edgeopt.source_files"
"""``model.meta`` key holding the absolute paths of every file a loaded model reads:
the model file first, then its external-data files (a tuple of ``str``)."""

PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Tensors take most of a model's bytes; keep a margin for the graph itself.
_EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT_BYTES - 64 * 2**20

ModelSource = str | os.PathLike[str] | onnx.ModelProto | ir.Model | bytes

_BACKUP_NAME = "previous.data"  # the old data file, inside the staging folder, during a swap


def load_model(source: ModelSource) -> ir.Model:
    """Load a model from a path, serialized bytes, a ``ModelProto`` or an IR model.

    Raises:
        ModelLoadError: the file is missing, empty or not ONNX, has an IR version
            newer than onnx reads, has a node that reads a name nothing defines, or
            external data is missing or points outside the model's folder.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, onnx.ModelProto):
        return ir.serde.deserialize_model(_checked(source, "<ModelProto>"))
    if isinstance(source, bytes):
        return ir.serde.deserialize_model(_parse(source, "<bytes>"))
    path = Path(source).resolve()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModelLoadError(f"{path}: model file {what}. Check the path.")
    proto = _parse(path.read_bytes(), str(path))
    data_files = _check_external_data(proto, path)
    model = ir.serde.deserialize_model(proto)
    for tensor in _external_tensors(model):
        tensor.base_dir = path.parent
    model.meta[SOURCE_PATH_KEY] = str(path)
    model.meta[SOURCE_FILES_KEY] = (str(path), *sorted(map(str, data_files)))
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: not a valid ONNX model (the file is empty). Re-export or re-download it.")
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
    return _checked(proto, where)


def _checked(proto: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """``proto`` if onnx can read its IR version and every name its nodes read is defined."""
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelLoadError(
            f"{where}: IR version {proto.ir_version} is newer than this onnx {onnx.__version__} reads "
            f"(up to {onnx.IR_VERSION}). Re-export the model with a released exporter, or upgrade onnx."
        )
    undefined = undefined_reads(proto)
    if undefined:
        more = f" (and {len(undefined) - 1} more)" if len(undefined) > 1 else ""
        raise ModelLoadError(f"{where}: {undefined[0]}{more}: the file is broken; re-export it.")
    return proto


def _graph_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensor_protos(graph.node)


def _node_tensor_protos(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for tensor in [*sparse, *attr.sparse_tensors]:
                yield from (tensor.values, tensor.indices)
            if attr.HasField("g"):
                yield from _graph_tensor_protos(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensor_protos(sub)


def _check_external_data(proto: onnx.ModelProto, path: Path) -> set[Path]:
    """Check every external-data location and return the files they name."""
    base = path.parent
    files = set()
    function_nodes = [node for function in proto.functions for node in function.node]
    for tensor in [*_graph_tensor_protos(proto.graph), *_node_tensor_protos(function_nodes)]:
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
        files.add(target)
    return files


def _nodes(model: ir.Model) -> list[ir.Node]:
    """Every node of the main graph, the model's functions and all their subgraphs."""
    graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
    return [node for graph in graphs for node in ir.traversal.RecursiveGraphIterator(graph)]


def _subgraphs(nodes: Iterable[ir.Node]) -> Iterator[ir.Graph]:
    for node in nodes:
        for attr in node.attributes.values():
            if attr.is_ref() or attr.value is None:
                continue
            if attr.type == ir.AttributeType.GRAPH:
                yield attr.value
            elif attr.type == ir.AttributeType.GRAPHS:
                yield from attr.value


def _tensor_attrs(nodes: Iterable[ir.Node]) -> Iterator[tuple[ir.Node, ir.Attr, list]]:
    """``(node, attribute, its tensors)`` for every TENSOR/TENSORS attribute."""
    for node in nodes:
        for attr in list(node.attributes.values()):
            if attr.is_ref() or attr.value is None:
                continue
            if attr.type == ir.AttributeType.TENSOR:
                yield node, attr, [attr.value]
            elif attr.type == ir.AttributeType.TENSORS:
                yield node, attr, list(attr.value)


def _initializers(model: ir.Model, nodes: list[ir.Node]) -> list[ir.Value]:
    return [v for g in (model.graph, *_subgraphs(nodes)) for v in g.initializers.values()]


def _external_tensors(model: ir.Model) -> list[ir.ExternalTensor]:
    nodes = _nodes(model)
    tensors = [v.const_value for v in _initializers(model, nodes)]
    tensors += [t for _, _, attr_tensors in _tensor_attrs(nodes) for t in attr_tensors]
    return [t for t in tensors if isinstance(t, ir.ExternalTensor)]


def _load_external_tensors(model: ir.Model, *, initializers: bool) -> None:
    """Read into memory the external tensors a save would leave pointing at the source.

    ``ir.save(external_data=...)`` moves the initializers of ``model.graphs()`` into
    the new data file itself, so ``initializers=False`` leaves those; tensors held in
    attributes, and initializers of graphs inside functions, are always loaded.
    """
    nodes = _nodes(model)
    saved_by_ir = set() if initializers else {id(v) for g in model.graphs() for v in g.initializers.values()}
    for value in _initializers(model, nodes):
        if isinstance(value.const_value, ir.ExternalTensor) and id(value) not in saved_by_ir:
            value.const_value = ir.external_data.convert_tensors_from_external([value.const_value])[0]
    for node, attr, tensors in _tensor_attrs(nodes):
        if any(isinstance(t, ir.ExternalTensor) for t in tensors):
            loaded = [ir.external_data.convert_tensors_from_external([t])[0]
                      if isinstance(t, ir.ExternalTensor) else t for t in tensors]
            new = loaded[0] if attr.type == ir.AttributeType.TENSOR else loaded
            node.attributes[attr.name] = ir.Attr(attr.name, attr.type, new, doc_string=attr.doc_string)


def serialize_with_data(model: ir.Model) -> onnx.ModelProto:
    """``model`` as one ``ModelProto`` holding every tensor's bytes, for tools that take a proto and
    may write it elsewhere (ORT's quantizers, onnx2tf): a proto that still points at external data
    breaks there. Tensors still in external files are read into ``model`` first (in place)."""
    _load_external_tensors(model, initializers=True)
    return ir.serde.serialize_model(model)


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of every initializer and tensor attribute in ``model``, functions included."""
    nodes = _nodes(model)
    total = sum(v.const_value.nbytes for v in _initializers(model, nodes) if v.const_value is not None)
    return total + sum(t.nbytes for _, _, tensors in _tensor_attrs(nodes) for t in tensors)


def save_model(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    overwrite_input: bool = False,
) -> Path:
    """Write ``model`` to ``path`` atomically and return the absolute path.

    Args:
        model: The model to write. External tensors it still reads lazily are
            loaded into memory where the new files can't refer to them.
        path: Destination ``.onnx`` file; its folder is created if needed.
        external_data: Store tensors in ``<name>.data`` beside the model. ``None``
            (the default) does so only when the model would exceed protobuf's 2 GB.
        overwrite_input: Allow writing over the files the model was loaded from
            (the model file or one of its external-data files).

    Raises:
        ModelSaveError: a file to write is one the model was loaded from, or
            writing failed. The message says whether anything changed on disk.
    """
    dest = Path(path).resolve()
    if external_data is None:
        external_data = tensor_bytes(model) > _EXTERNAL_DATA_THRESHOLD
    data = dest.with_name(dest.name + ".data") if external_data else None
    if not overwrite_input:
        _refuse_overwriting_sources(model, dest, data)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as e:
        raise ModelSaveError(f"{dest}: cannot create the output folder ({e}).") from e
    swapped = False
    try:
        try:
            _load_external_tensors(model, initializers=not external_data)
            ir.save(model, staging / dest.name, external_data=data.name if data else None)
        except (OSError, ValueError, google.protobuf.message.EncodeError) as e:
            raise ModelSaveError(f"{dest}: writing the model failed ({e}); nothing was written.") from e
        _swap_into_place(staging, dest, data)
        swapped = True
    finally:
        if swapped or not (staging / _BACKUP_NAME).exists():  # else it holds the only old copy
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("saved %s (%s)", dest, "external data" if external_data else "single file")
    return dest


def _refuse_overwriting_sources(model: ir.Model, dest: Path, data: Path | None) -> None:
    model_file = model.meta.get(SOURCE_PATH_KEY)
    sources = {*model.meta.get(SOURCE_FILES_KEY, ()), *([model_file] if model_file else [])}
    for target in (dest, data):
        for source in sources:
            if target is not None and _same_file(target, Path(source)):
                what = "the input model" if source == model_file else "the input model's external data"
                raise ModelSaveError(
                    f"{target}: refusing to overwrite {what} ({source}). Write to another "
                    "path (-o OUT), or pass --in-place / overwrite_input=True."
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also catches hard links
    except OSError:  # one of them does not exist
        return a.resolve() == b.resolve()


def _swap_into_place(staging: Path, dest: Path, data: Path | None) -> None:
    """Move the staged files into place, the model last.

    The old data file is first moved aside into ``staging``, so that it can be put
    back if a later step fails; the old model file is only ever replaced atomically.
    """
    backup = staging / _BACKUP_NAME
    backed_up = replaced = False
    try:
        if data is not None:
            if os.path.lexists(data):
                os.replace(data, backup)
                backed_up = True
            os.replace(staging / data.name, data)
            replaced = True
        os.replace(staging / dest.name, dest)
    except OSError as e:
        if data is None or not (backed_up or replaced):
            raise ModelSaveError(f"{dest}: writing the model failed ({e}); nothing was written.") from e
        _restore_data(dest, data, backup if backed_up else None, e)


def _restore_data(dest: Path, data: Path, backup: Path | None, error: OSError) -> None:
    """Undo the data file's swap after the model's failed with ``error``; always raises."""
    failed = f"{dest}: writing the model failed ({error})"
    try:
        if backup is not None:
            os.replace(backup, data)
        else:
            data.unlink(missing_ok=True)
    except OSError as e:
        undo = (f"the previous data file is kept at {backup}; move it back to {data}"
                if backup else f"delete {data}")
        raise ModelSaveError(
            f"{failed} after {data} was written, and undoing that failed too ({e}): "
            f"{undo}, or save again."
        ) from error
    done = f"{data.name} was restored" if backup else f"the new {data.name} was removed"
    raise ModelSaveError(f"{failed}; {done}, so nothing changed.") from error


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize ``model`` to a ``ModelProto`` (external tensors stay references)."""
    return ir.serde.serialize_model(model)
