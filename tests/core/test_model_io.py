"""Tests for edgeopt.core.model_io: loading, external data checks and atomic saving."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.numpy_helper
import onnx_ir as ir
import pytest

from edgeopt.core import model_io
from edgeopt.core.errors import ModelLoadError, ModelSaveError
from edgeopt.core.model_io import (
    SOURCE_FILES_KEY,
    SOURCE_PATH_KEY,
    load_model,
    save_model,
    tensor_bytes,
)
from edgeopt.core.runtime import random_feeds, run_model

ADD_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
add_bias (float[2, 3] x) => (float[2, 3] y)
<float[3] b = {1.0, 2.0, 3.0}>
{
    y = Add(x, b)
}
"""

# A 16x16 float weight is 1 KiB, above onnx-ir's 256-byte threshold for external data.
MATMUL_TEXT = """
<ir_version: 10, opset_import: ["" : 18]>
matmul (float[4, 16] x) => (float[4, 16] y)
{
    y = MatMul(x, w)
}
"""


def _matmul_proto(scale: float = 1.0) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(MATMUL_TEXT)
    weight = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32) * scale
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _matmul_model(scale: float = 1.0) -> ir.Model:
    return ir.serde.deserialize_model(_matmul_proto(scale))


def _feeds(model: ir.Model) -> dict[str, np.ndarray]:
    return random_feeds(model, seed=0)


def _assert_close(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-5, atol=1e-6)


def _no_temp_dirs(folder: Path, name: str) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(f".{name}.")]


def _external_location(path: Path, tensor: str) -> str | None:
    proto = onnx.load(str(path), load_external_data=False)
    for init in proto.graph.initializer:
        if init.name == tensor and init.data_location == onnx.TensorProto.EXTERNAL:
            return next(e.value for e in init.external_data if e.key == "location")
    return None


# --- loading -----------------------------------------------------------------------------


def test_load_from_path_bytes_proto_and_model_agree(tmp_path: Path) -> None:
    proto = onnx.parser.parse_model(ADD_TEXT)
    path = tmp_path / "add.onnx"
    onnx.save(proto, str(path))

    loaded = {
        "path": load_model(path),
        "str": load_model(str(path)),
        "bytes": load_model(proto.SerializeToString()),
        "proto": load_model(proto),
    }

    for model in loaded.values():
        assert [n.op_type for n in model.graph] == ["Add"]
        assert [v.name for v in model.graph.inputs] == ["x"]
        np.testing.assert_array_equal(
            model.graph.initializers["b"].const_value.numpy(), [1.0, 2.0, 3.0]
        )
    # Only a file has a source path, the one save_model refuses to overwrite.
    assert loaded["path"].meta[SOURCE_PATH_KEY] == str(path.resolve())
    assert loaded["str"].meta[SOURCE_PATH_KEY] == str(path.resolve())
    assert SOURCE_PATH_KEY not in loaded["bytes"].meta
    assert SOURCE_PATH_KEY not in loaded["proto"].meta
    model = loaded["proto"]
    assert load_model(model) is model


def test_missing_file_names_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = str(tmp_path.resolve() / "missing.onnx")

    with pytest.raises(ModelLoadError, match=re.escape(expected) + ".*does not exist"):
        load_model("missing.onnx")


def test_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is a directory, not a file"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: np.random.default_rng(0).bytes(len(data)), id="random"),
        pytest.param(lambda data: b"", id="empty"),
    ],
)
def test_corrupt_file_is_not_a_valid_model(tmp_path: Path, corrupt) -> None:
    data = _matmul_proto().SerializeToString()
    path = tmp_path / "bad.onnx"
    path.write_bytes(corrupt(data))

    with pytest.raises(ModelLoadError, match=re.escape(str(path)) + ": not a valid ONNX model"):
        load_model(path)
    with pytest.raises(ModelLoadError, match="<bytes>: not a valid ONNX model"):
        load_model(corrupt(data))


# --- external data -----------------------------------------------------------------------


def test_external_data_round_trip(tmp_path: Path) -> None:
    model = _matmul_model()
    feeds = _feeds(model)
    expected = run_model(model, feeds)

    dest = save_model(model, tmp_path / "m.onnx", external_data=True)

    assert dest == (tmp_path / "m.onnx").resolve()
    assert (tmp_path / "m.onnx.data").stat().st_size >= 16 * 16 * 4
    assert _external_location(dest, "w") == "m.onnx.data"
    assert _no_temp_dirs(tmp_path, "m.onnx")
    onnx.checker.check_model(str(dest), full_check=True)
    reloaded = load_model(dest)
    _assert_close(run_model(reloaded, feeds), expected)
    _assert_close(run_model(str(dest), feeds), expected)


def _proto_with_external_weight(location: str) -> onnx.ModelProto:
    proto = _matmul_proto()
    tensor = proto.graph.initializer[0]
    onnx.external_data_helper.set_external_data(tensor, location=location, offset=0, length=1024)
    tensor.ClearField("raw_data")
    return proto


@pytest.mark.parametrize("absolute", [False, True], ids=["parent-dir", "absolute"])
def test_external_data_outside_model_folder_is_refused(tmp_path: Path, absolute: bool) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(bytes(1024))  # present, so only the location is wrong
    folder = tmp_path / "model"
    folder.mkdir()
    location = str(outside) if absolute else "../outside.bin"
    path = folder / "m.onnx"
    onnx.save(_proto_with_external_weight(location), str(path))

    with pytest.raises(
        ModelLoadError, match=r"tensor 'w' points to external data at .*outside the model's"
    ) as info:
        load_model(path)
    assert location in str(info.value)


def test_missing_external_data_names_tensor_and_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_proto_with_external_weight("weights.bin"), str(path))
    expected = str(tmp_path.resolve() / "weights.bin")

    with pytest.raises(
        ModelLoadError,
        match=re.escape(expected) + r": external data file of tensor 'w' does not exist",
    ):
        load_model(path)


def test_external_data_model_saved_elsewhere_becomes_self_contained(tmp_path: Path) -> None:
    model = _matmul_model()
    feeds = _feeds(model)
    expected = run_model(model, feeds)
    source = save_model(model, tmp_path / "src" / "m.onnx", external_data=True)
    loaded = load_model(source)

    dest = save_model(loaded, tmp_path / "out" / "m.onnx", external_data=False)

    assert sorted(os.listdir(dest.parent)) == ["m.onnx"]
    (tmp_path / "src" / "m.onnx.data").unlink()  # the copy must not read the source's data
    assert _external_location(dest, "w") is None
    _assert_close(run_model(str(dest), feeds), expected)


def test_auto_external_data_above_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_io, "_EXTERNAL_DATA_THRESHOLD", 512)
    big = _matmul_model()
    feeds = _feeds(big)
    expected = run_model(big, feeds)

    big_path = save_model(big, tmp_path / "big.onnx")
    small_path = save_model(ir.from_onnx_text(ADD_TEXT), tmp_path / "small.onnx")

    assert _external_location(big_path, "w") == "big.onnx.data"
    assert (tmp_path / "big.onnx.data").stat().st_size >= 1024
    assert not (tmp_path / "small.onnx.data").exists()
    assert _external_location(small_path, "b") is None
    _assert_close(run_model(load_model(big_path), feeds), expected)


def test_tensor_bytes_counts_initializers_and_constants() -> None:
    model = ir.from_onnx_text(
        """
        <ir_version: 10, opset_import: ["" : 18]>
        g (float[3] x) => (float[3] y)
        <float[3] b = {1.0, 2.0, 3.0}>
        {
            c = Constant<value = float[3] {4.0, 5.0, 6.0}>()
            t = Add(x, b)
            y = Add(t, c)
        }
        """
    )

    assert tensor_bytes(model) == 3 * 4 + 3 * 4


# --- atomic save -------------------------------------------------------------------------


def test_save_replaces_existing_file_completely(tmp_path: Path) -> None:
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"\xff" * 100_000)  # longer than the model: no stale tail may remain
    model = ir.from_onnx_text(ADD_TEXT)

    save_model(model, dest)

    assert dest.stat().st_size < 1_000
    reloaded = onnx.load(str(dest))
    onnx.checker.check_model(reloaded, full_check=True)
    assert [n.op_type for n in reloaded.graph.node] == ["Add"]
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_save_creates_missing_folders(tmp_path: Path) -> None:
    dest = save_model(ir.from_onnx_text(ADD_TEXT), tmp_path / "a" / "b" / "m.onnx")

    assert dest.is_file()
    assert [n.op_type for n in load_model(dest).graph] == ["Add"]


def test_save_into_a_file_instead_of_folder_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")

    with pytest.raises(ModelSaveError, match="cannot create the output folder"):
        save_model(ir.from_onnx_text(ADD_TEXT), blocker / "m.onnx")


@pytest.mark.parametrize("external_data", [False, True], ids=["single-file", "external"])
def test_failed_save_keeps_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external_data: bool
) -> None:
    dest = tmp_path / "m.onnx"
    save_model(_matmul_model(), dest, external_data=external_data)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing_save(model, path, external_data=None, **kwargs) -> None:
        Path(path).write_bytes(b"partial")
        if external_data:
            (Path(path).parent / external_data).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(ir, "save", failing_save)
    with pytest.raises(ModelSaveError, match="No space left on device.*nothing was written"):
        save_model(_matmul_model(scale=2.0), dest, external_data=external_data)

    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
    assert _no_temp_dirs(tmp_path, "m.onnx")


def test_refuses_to_overwrite_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_model(ir.from_onnx_text(ADD_TEXT), tmp_path / "m.onnx")
    content = path.read_bytes()
    model = load_model(path)
    model.graph.doc_string = "changed"
    monkeypatch.chdir(tmp_path)

    # The same file spelled differently is still the input.
    for spelling in (path, "m.onnx", tmp_path / "sub" / ".." / "m.onnx"):
        with pytest.raises(ModelSaveError, match="refusing to overwrite the input model"):
            save_model(model, spelling)
    assert path.read_bytes() == content

    save_model(model, path, overwrite_input=True)

    assert onnx.load(str(path)).graph.doc_string == "changed"


def test_overwrite_input_with_external_data_in_place(tmp_path: Path) -> None:
    model = _matmul_model()
    feeds = _feeds(model)
    expected = run_model(model, feeds)
    path = save_model(model, tmp_path / "m.onnx", external_data=True)
    loaded = load_model(path)

    save_model(loaded, path, external_data=True, overwrite_input=True)

    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    _assert_close(run_model(str(path), feeds), expected)


# --- external data the overwrite guard must see -------------------------------------------


def _save_with_data_file(folder: Path, data_name: str) -> Path:
    """``folder/m.onnx`` whose weight ``w`` lives in ``folder/<data_name>``."""
    folder.mkdir(parents=True, exist_ok=True)
    proto = _matmul_proto()
    onnx.save_model(proto, str(folder / "m.onnx"), save_as_external_data=True,
                    location=data_name, size_threshold=0)
    return folder / "m.onnx"


def test_load_records_model_and_data_files(tmp_path: Path) -> None:
    path = _save_with_data_file(tmp_path, "weights.bin")

    model = load_model(path)

    assert model.meta[SOURCE_FILES_KEY] == (str(path.resolve()), str((tmp_path / "weights.bin").resolve()))
    assert model.meta[SOURCE_PATH_KEY] == str(path.resolve())
    assert SOURCE_FILES_KEY not in load_model(_matmul_proto()).meta


@pytest.mark.parametrize(
    ("output", "external_data"),
    [
        pytest.param("m.onnx.data", False, id="output-is-data-file"),
        pytest.param("m.onnx.data", True, id="output-is-data-file-external"),
        pytest.param("out.onnx", True, id="output-data-is-input-data"),
        pytest.param("alias.onnx", False, id="hard-link-to-data-file"),
    ],
)
def test_refuses_to_overwrite_input_data_file(
    tmp_path: Path, output: str, external_data: bool
) -> None:
    data_name = "out.onnx.data" if output == "out.onnx" else "m.onnx.data"
    path = _save_with_data_file(tmp_path, data_name)
    if output == "alias.onnx":
        os.link(tmp_path / data_name, tmp_path / output)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model = load_model(path)
    feeds = _feeds(model)
    expected = run_model(str(path), feeds)

    with pytest.raises(ModelSaveError, match="refusing to overwrite the input model") as info:
        save_model(model, tmp_path / output, external_data=external_data)

    assert "\n" not in str(info.value) and "--in-place" in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    _assert_close(run_model(str(path), feeds), expected)


def test_data_file_of_input_may_be_overwritten_when_asked(tmp_path: Path) -> None:
    path = _save_with_data_file(tmp_path, "out.onnx.data")
    model = load_model(path)
    feeds = _feeds(model)
    expected = run_model(str(path), feeds)

    out = save_model(model, tmp_path / "out.onnx", external_data=True, overwrite_input=True)

    _assert_close(run_model(str(out), feeds), expected)
    # Writing to a name the input does not read needs no permission.
    other = save_model(load_model(path), tmp_path / "other.onnx", external_data=False)
    _assert_close(run_model(str(other), feeds), expected)


# --- external data outside the main graph -------------------------------------------------

CONST = np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)


def _external_tensor(name: str, array: np.ndarray, location: str) -> onnx.TensorProto:
    tensor = onnx.numpy_helper.from_array(array, name)
    onnx.external_data_helper.set_external_data(
        tensor, location=location, offset=0, length=array.nbytes
    )
    tensor.ClearField("raw_data")
    return tensor


def _constant_model(where: str, location: str) -> onnx.ModelProto:
    """``y = x + c``; ``c`` is a Constant with external data, in the graph or a function."""
    h = onnx.helper
    const = h.make_node("Constant", [], ["c"], value=_external_tensor("c", CONST, location))
    add = h.make_node("Add", ["x", "c"], ["y"])
    opsets = [h.make_opsetid("", 18)]
    functions = []
    if where == "function":
        functions = [h.make_function("local", "AddConst", ["x"], ["y"], [const, add], opsets)]
        nodes = [h.make_node("AddConst", ["x"], ["y"], domain="local")]
        opsets = [*opsets, h.make_opsetid("local", 1)]
    else:
        nodes = [const, add]
    io = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [4, 16]) for n in "xy"]
    graph = h.make_graph(nodes, "g", [io[0]], [io[1]])
    return h.make_model(graph, opset_imports=opsets, functions=functions, ir_version=10)


def _write(proto: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.mark.parametrize("external_data", [False, True], ids=["single-file", "external"])
@pytest.mark.parametrize("where", ["graph", "function"])
def test_external_constant_saved_elsewhere_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, external_data: bool
) -> None:
    source = _write(_constant_model(where, "w.bin"), tmp_path / "a" / "m.onnx")
    (tmp_path / "a" / "w.bin").write_bytes(CONST.tobytes())
    monkeypatch.chdir(tmp_path)  # the data must be found next to the model, not in the cwd
    model = load_model("a/m.onnx")

    out = save_model(model, tmp_path / "b" / "out.onnx", external_data=external_data)
    for file in source.parent.iterdir():
        file.unlink()

    onnx.checker.check_model(str(out), full_check=True)
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    _assert_close(run_model(str(out), {"x": x}), {"y": x + CONST})


def _sparse(location_of: str, location: str) -> onnx.SparseTensorProto:
    values = np.arange(1, 5, dtype=np.float32)
    indices = np.arange(4, dtype=np.int64)
    values_t = onnx.numpy_helper.from_array(values, "s")
    indices_t = onnx.numpy_helper.from_array(indices, "s_indices")
    if location_of == "values":
        values_t = _external_tensor("s", values, location)
    else:
        indices_t = _external_tensor("s_indices", indices, location)
    return onnx.helper.make_sparse_tensor(values_t, indices_t, [4, 16])


def _traversal_model(case: str, location: str) -> onnx.ModelProto:
    h = onnx.helper
    if case == "function-constant":
        return _constant_model("function", location)
    proto = _constant_model("graph", "unused.bin")
    const = proto.graph.node[0]
    del const.attribute[:]
    if case == "sparse-initializer-indices":
        const.attribute.append(h.make_attribute("value", onnx.numpy_helper.from_array(CONST)))
        proto.graph.sparse_initializer.append(_sparse("indices", location))
    elif case in ("sparse-attribute-values", "sparse-attribute-indices"):
        const.attribute.append(h.make_attribute("sparse_value", _sparse(case.rsplit("-", 1)[1], location)))
    elif case == "function-subgraph":
        proto = _constant_model("function", "unused.bin")
        inner = _constant_model("graph", location).graph
        branch = h.make_graph(list(inner.node), "branch", [], [inner.output[0]])
        cond = h.make_node("Constant", [], ["cond"], value=h.make_tensor("k", 9, [], [True]))
        if_node = h.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
        del proto.functions[0].node[:]
        proto.functions[0].node.extend([cond, if_node])
    return proto


@pytest.mark.parametrize(
    "case",
    ["function-constant", "function-subgraph", "sparse-initializer-indices",
     "sparse-attribute-values", "sparse-attribute-indices"],
)
def test_external_data_outside_folder_is_refused_everywhere(tmp_path: Path, case: str) -> None:
    (tmp_path / "outside.bin").write_bytes(bytes(4096))
    path = _write(_traversal_model(case, "../outside.bin"), tmp_path / "model" / "m.onnx")

    with pytest.raises(ModelLoadError, match=r"points to external data at '\.\./outside\.bin', outside"):
        load_model(path)


# --- swapping the model and its data file into place --------------------------------------


def _fail_replacing(monkeypatch: pytest.MonkeyPatch, *targets: Path) -> None:
    """Make ``os.replace`` fail whenever it would write one of ``targets``."""
    real = os.replace

    def replace(src, dst, **kwargs) -> None:
        if Path(dst) in targets:
            raise OSError(f"cannot write {dst}")
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("existing", [True, False], ids=["previous-output", "no-previous-output"])
def test_failed_model_swap_restores_previous_data_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    dest = tmp_path / "m.onnx"
    feeds = _feeds(_matmul_model())
    if existing:
        save_model(_matmul_model(), dest, external_data=True)
        expected = run_model(str(dest), feeds)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _fail_replacing(monkeypatch, dest)

    with pytest.raises(ModelSaveError, match=f"cannot write {dest}.*nothing changed") as info:
        save_model(_matmul_model(scale=2.0), dest, external_data=True)

    assert "nothing was written" not in str(info.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert _no_temp_dirs(tmp_path, "m.onnx")
    if existing:
        monkeypatch.undo()
        _assert_close(run_model(str(dest), feeds), expected)


def test_failed_restore_says_where_the_previous_data_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = save_model(_matmul_model(), tmp_path / "m.onnx", external_data=True)
    data = tmp_path / "m.onnx.data"
    previous = data.read_bytes()
    real = os.replace
    writes_to_data = []

    def replace(src, dst, **kwargs) -> None:
        if Path(dst) == dest:
            raise OSError("cannot write the model")
        if Path(dst) == data:
            writes_to_data.append(src)
            if len(writes_to_data) == 2:  # the first puts the new data in, the second restores
                raise OSError("cannot restore")
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(ModelSaveError, match=re.escape(str(data)) + ".*was written") as info:
        save_model(_matmul_model(scale=2.0), dest, external_data=True)

    message = str(info.value)
    assert "\n" not in message and "cannot write the model" in message
    backup = Path(writes_to_data[1])
    assert str(backup) in message
    assert backup.read_bytes() == previous
