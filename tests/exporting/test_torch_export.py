"""Tests of edgeopt.export (torch_export.py): real exports with both exporters, checked in ORT."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeopt.core.errors import ExportError
from edgeopt.core.model_io import load_model, to_proto
from edgeopt.core.runtime import run_model
from edgeopt.exporting.torch_export import ExportResult, export


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class TokenNet(torch.nn.Module):
    """Integer and float inputs, nested tuple outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> tuple:
        h = self.embed(ids) * scale
        return h.sum(-1), (h.mean(), ids + 1)


class AlwaysTrueBranch(torch.nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, tracing bakes it in.

    The condition holds for every input, so the traced graph is right.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x * x).sum() >= 0:
            return torch.relu(x) * 2
        return -x


class LargeInputBranch(torch.nn.Module):
    """Takes the traced branch only for inputs above 100, which random inputs never are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0, 0] > 100:
            return x * 2
        return x - 1


@torch.library.custom_op("edgeopt_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


class CustomOpNet(torch.nn.Module):
    """Uses an op with no fake kernel (dynamo fails) and no ONNX symbolic (tracing fails)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _twice(x) + 1


def _conv_net() -> ConvNet:
    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():  # non-trivial BN statistics, so a missed eval() would show
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


def _example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _assert_matches_torch(result: ExportResult, module: torch.nn.Module, x: torch.Tensor) -> None:
    onnx.checker.check_model(to_proto(result.model), full_check=True)
    name = result.model.graph.inputs[0].name
    (got,) = run_model(result.model, {name: x.numpy()}).values()
    with torch.no_grad():
        want = module.eval()(x).numpy()
    # float32 conv+linear computed by two libraries: summation order differs slightly.
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_dynamo_export_matches_torch_and_honours_names() -> None:
    net = _conv_net()
    net.train()
    result = export(net, _example(), input_names=["image"], output_names=["logits"])
    assert result.report.exporter == "dynamo"
    assert result.report.fallback_reason is None
    assert [c.inputs for c in result.report.checks] == ["example", "random", "random"]
    assert result.report.max_abs <= 1e-4
    assert result.report.opset == 18
    assert [v.name for v in result.model.graph.inputs] == ["image"]
    assert [v.name for v in result.model.graph.outputs] == ["logits"]
    ops = [n.op_type for n in result.model.graph]
    assert "Conv" in ops and "Gemm" in ops
    assert "BatchNormalization" not in ops  # exported in eval mode: folded into the Conv
    assert net.training and net.bn.training  # the previous mode is restored
    _assert_matches_torch(result, net, _example())


def test_forced_torchscript_exporter() -> None:
    net = _conv_net()
    result = export(net, (_example(),), exporter="torchscript", opset=17, random_checks=1)
    assert result.report.exporter == "torchscript"
    assert result.report.fallback_reason is None
    assert result.report.opset == 17
    assert len(result.report.checks) == 2
    assert [v.name for v in result.model.graph.inputs] == ["x"]  # forward's parameter name
    ops = [n.op_type for n in result.model.graph]
    assert "Conv" in ops and "Gemm" in ops
    assert "BatchNormalization" not in ops  # eval mode: folded into the Conv
    _assert_matches_torch(result, net, _example())


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dynamic_batch_axis(exporter: str) -> None:
    net = _conv_net().eval()
    result = export(
        net, _example(2), input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, exporter=exporter,
    )
    assert result.report.exporter == exporter
    batch_dim = result.model.graph.inputs[0].shape[0]
    assert not isinstance(batch_dim, int)
    for batch in (1, 5):
        _assert_matches_torch(result, net, _example(batch))


def test_integer_inputs_and_nested_outputs() -> None:
    ids = torch.tensor([[1, 2, 9]])  # random ids are drawn below 10, the vocabulary size
    axes = {"ids": {0: "batch", 1: "seq"}, "scale": {0: "batch", 1: "seq"}}
    result = export(TokenNet(), (ids, torch.randn(1, 3, 1)), dynamic_axes=axes)
    assert result.report.exporter == "dynamo"
    assert [v.name for v in result.model.graph.inputs] == ["ids", "scale"]
    assert len(result.model.graph.outputs) == 3
    feeds = {"ids": np.array([[0, 3], [9, 9]]), "scale": np.ones((2, 2, 1), np.float32)}
    outputs = list(run_model(result.model, feeds).values())
    np.testing.assert_array_equal(outputs[2], feeds["ids"] + 1)


def test_module_failing_on_grown_axes_names_them() -> None:
    # The Linear layer fixes the spatial size, so axis 2 cannot really be dynamic.
    with pytest.raises(ExportError, match=r"module itself fails on random #1 inputs "
                       r"\(x\[2, 3, 7, 6\]\).*dynamic_axes"):
        export(_conv_net(), _example(), dynamic_axes={"x": {2: "height"}}, exporter="torchscript")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_auto_falls_back_to_torchscript(caplog: pytest.LogCaptureFixture) -> None:
    module = AlwaysTrueBranch()
    with caplog.at_level(logging.WARNING, logger="edgeopt.exporting.torch_export"):
        result = export(module, torch.randn(2, 3))
    assert result.report.exporter == "torchscript"
    assert result.report.fallback_reason
    assert "\n" not in result.report.fallback_reason
    assert "dynamo exporter failed" in caplog.text
    assert result.report.max_abs <= 1e-6
    (got,) = run_model(result.model, {"x": np.full((2, 3), -1.5, np.float32)}).values()
    np.testing.assert_array_equal(got, np.zeros((2, 3), np.float32))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_mismatch_raises_export_error() -> None:
    example = torch.full((2, 3), 200.0)  # traced on the `x * 2` branch
    with pytest.raises(ExportError, match=r"torchscript export differs from torch on random #1 "
                       r"inputs: max abs error .*atol=0\.0001.*Try exporter='dynamo'"):
        export(LargeInputBranch(), example, exporter="torchscript")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_mismatch_is_not_raised_without_random_checks() -> None:
    result = export(LargeInputBranch(), torch.full((2, 3), 200.0), exporter="torchscript",
                    random_checks=0)
    assert [c.inputs for c in result.report.checks] == ["example"]


def test_both_exporters_failing_names_both_reasons() -> None:
    with pytest.raises(ExportError, match=r"both exporters failed\. dynamo: .*fake.*; "
                       r"torchscript: .*edgeopt_test::twice"):
        export(CustomOpNet(), torch.randn(2, 3))


def test_invalid_arguments() -> None:
    with pytest.raises(ExportError, match="unknown exporter 'jit'"):
        export(ConvNet(), _example(), exporter="jit")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="dynamic_axes names 'batch'"):
        export(ConvNet(), _example(), dynamic_axes={"batch": [0]})


def test_save_writes_a_loadable_file_and_no_temp_files(tmp_path: Path) -> None:
    net = _conv_net()
    dest = tmp_path / "out" / "net.onnx"
    result = export(net, _example(), dest, dynamic_axes={"x": [0]}, random_checks=1)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["net.onnx"]
    loaded = load_model(dest)
    assert [v.name for v in loaded.graph.inputs] == [v.name for v in result.model.graph.inputs]
    onnx.checker.check_model(str(dest), full_check=True)
    _assert_matches_torch(ExportResult(loaded, result.report), net, _example(3))
