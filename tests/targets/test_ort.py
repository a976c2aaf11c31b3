"""Tests for the ONNX Runtime CPU target: check, export, run."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort
import pytest

from edgeopt import targets
from edgeopt.core.errors import PassOptionError, UnsupportedOpError
from edgeopt.core.runtime import run_model
from edgeopt.core.target import Issue
from edgeopt.deploy.target_registry import get_target, list_targets

OrtCpuTarget = targets.OrtCpuTarget


def _model(text: str, names: dict[int, str] | None = None,
           initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for index, name in (names or {}).items():
        model.graph.node[index].name = name
    model.graph.initializer.extend(
        onnx.numpy_helper.from_array(a, n) for n, a in (initializers or {}).items()
    )
    return model


CLEAN_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
net (float[N, 3, 8, 8] x) => (float[N, 10] y)
{
    c = Conv<kernel_shape = [3, 3]>(x, W, B)
    r = Relu(c)
    p = GlobalAveragePool(r)
    f = Flatten(p)
    y = Gemm<transB = 1>(f, G)
}
"""


@pytest.fixture
def clean() -> ir.Model:
    rng = np.random.default_rng(0)
    proto = _model(CLEAN_TEXT, initializers={
        "W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "B": rng.standard_normal(4).astype(np.float32),
        "G": rng.standard_normal((10, 4)).astype(np.float32),
    })
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


TWO_CUSTOM_TEXT = """
<ir_version: 10, opset_import: ["" : 17, "my.domain" : 1, "other.domain" : 2]>
custom (float[2, 3] x) => (float[2, 3] y)
{
    a = my.domain.Foo(x)
    b = Relu(a)
    y = other.domain.Bar(b)
}
"""


def test_check_reports_every_unsupported_node_at_once() -> None:
    model = ir.serde.deserialize_model(
        _model(TWO_CUSTOM_TEXT, {0: "foo_node", 1: "relu_node", 2: "bar_node"}))

    issues = OrtCpuTarget().check(model)

    assert [(i.node, i.op) for i in issues] == [("foo_node", "my.domain::Foo"),
                                               ("bar_node", "other.domain::Bar")]
    assert "domain 'my.domain' is not known to ONNX Runtime" in issues[0].message
    assert "domain 'other.domain'" in issues[1].message
    assert all("custom-op library" in i.hint for i in issues)


def test_check_visits_subgraphs() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 17, "my.domain" : 1]>
    branchy (bool c, float[2] x) => (float[2] y)
    {
        y = If(c) <then_branch = then_g () => (float[2] t) { t = my.domain.Foo(x) },
                   else_branch = else_g () => (float[2] e) { e = Relu(x) }>
    }
    """
    model = _model(text)
    model.graph.node[0].attribute[0].g.node[0].name = "foo_in_then"

    issues = OrtCpuTarget().check(ir.serde.deserialize_model(model))

    assert [(i.node, i.op) for i in issues] == [("foo_in_then", "my.domain::Foo")]


SCATTER_TEXT = """
<ir_version: 7, opset_import: ["" : 11]>
old (float[2, 3] x, int64[2, 3] i, float[2, 3] u) => (float[2, 3] y)
{
    y = Scatter(x, i, u)
}
"""


def test_check_reports_op_without_kernel_at_the_model_opset() -> None:
    # Scatter was deprecated in opset 11; ORT only has kernels for opsets 9-10.
    proto = _model(SCATTER_TEXT, {0: "old_scatter"})
    with pytest.raises(Exception, match="Scatter"):  # the check agrees with ORT itself
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    issues = OrtCpuTarget().check(ir.serde.deserialize_model(proto))

    assert len(issues) == 1
    assert (issues[0].node, issues[0].op) == ("old_scatter", "Scatter")
    assert "no CPU kernel at opset 11" in issues[0].message
    assert "9-10" in issues[0].message
    assert "edgeopt convert-opset" in issues[0].hint


def test_kernel_ranges_in_message_are_listed_once() -> None:
    text = """
    <ir_version: 7, opset_import: ["" : 6]>
    old (float[2] a, float[2] b) => (float[2] y) { y = Add(a, b) }
    """
    (issue,) = OrtCpuTarget().check(ir.serde.deserialize_model(_model(text)))

    ranges = re.search(r"kernels cover opsets (.*)\)", issue.message)
    assert ranges is not None
    listed = ranges.group(1).split(", ")
    assert len(listed) == len(set(listed)), issue.message


def test_check_clean_model_has_no_issues(clean: ir.Model) -> None:
    assert OrtCpuTarget().check(clean) == []


def test_constant_nodes_are_fine() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    consts (float[2, 3] x) => (float[2, 3] y)
    {
        k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
        s = Constant<value_ints = [1, 3]>()
        r = Reshape(k, s)
        y = Add(x, r)
    }
    """
    proto = _model(text)
    onnx.checker.check_model(proto, full_check=True)
    model = ir.serde.deserialize_model(proto)

    assert OrtCpuTarget().check(model) == []
    x = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(run_model(model, {"x": x})["y"], x + [1.0, 2.0, 3.0])


def test_op_defined_as_onnx_function_is_not_an_issue() -> None:
    # ORT has no CPU kernel for Mish; it expands the function body from the ONNX schema.
    text = """
    <ir_version: 10, opset_import: ["" : 18]>
    mish (float[4] x) => (float[4] y) { y = Mish(x) }
    """
    model = ir.serde.deserialize_model(_model(text))

    assert OrtCpuTarget().check(model) == []
    x = np.array([-2.0, -0.5, 0.0, 3.0], np.float32)
    np.testing.assert_allclose(run_model(model, {"x": x})["y"],
                               x * np.tanh(np.log1p(np.exp(x))), rtol=1e-5, atol=1e-6)


def test_model_local_function_is_not_an_issue() -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 17, "local" : 1]>
    uses_fn (float[2] x) => (float[2] y)
    {
        y = local.Double(x)
    }
    <domain: "local", opset_import: ["" : 17]>
    Double (a) => (b)
    {
        b = Add(a, a)
    }
    """
    model = ir.serde.deserialize_model(_model(text))

    assert OrtCpuTarget().check(model) == []
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(run_model(model, {"x": x})["y"], 2 * x)


def test_export_raises_listing_every_node_and_writes_nothing(tmp_path: Path) -> None:
    model = ir.serde.deserialize_model(_model(TWO_CUSTOM_TEXT, {0: "foo_node", 2: "bar_node"}))
    out_dir = tmp_path / "artifact"

    with pytest.raises(UnsupportedOpError, match="target 'ort-cpu' cannot run 2 node") as error:
        OrtCpuTarget().export(model, out_dir)

    assert "node 'foo_node' (my.domain::Foo)" in str(error.value)
    assert "node 'bar_node' (other.domain::Bar)" in str(error.value)
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_export_then_run_equals_run_model(clean: ir.Model, tmp_path: Path) -> None:
    target = get_target("ort-cpu")
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)}
    expected = run_model(clean, feeds)

    artifact = target.export(clean, tmp_path / "ort-cpu")

    assert artifact == (tmp_path / "ort-cpu" / "model.onnx").resolve()
    onnx.checker.check_model(onnx.load(artifact), full_check=True)
    got = target.run(artifact, feeds)
    assert list(got) == ["y"]
    # ORT's graph optimizations (on in run()) may fuse Conv+Relu: allow float rounding.
    np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-5, atol=1e-5)


def test_prepare_cleans_up_before_export(tmp_path: Path) -> None:
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    idy (float[2] x) => (float[2] y)
    {
        i = Identity(x)
        y = Relu(i)
    }
    """
    model = ir.serde.deserialize_model(_model(text))
    target = get_target("ort-cpu")

    target.prepare()(model)

    assert [n.op_type for n in model.graph] == ["Relu"]
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(target.run(target.export(model, tmp_path), {"x": x})["y"],
                                  [0.0, 2.0])


def test_get_target_unknown_suggests() -> None:
    with pytest.raises(PassOptionError, match=re.escape("unknown target 'ort-cpux' "
                                                        "(did you mean 'ort-cpu'")):
        get_target("ort-cpux")
    assert "ort-cpu" in list_targets()
    assert isinstance(get_target("ort-cpu"), OrtCpuTarget)


def test_issue_str_names_node_op_and_hint() -> None:
    issue = Issue("n1", "my.domain::Foo", "not known", "Register it")

    assert str(issue) == "node 'n1' (my.domain::Foo): not known. Register it"
