"""Export sources: TorchScript, ExportedProgram, factory and Hugging Face folders; input specs and .npz.

Each export is checked in ONNX Runtime against the torch module's own output.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeopt.core.errors import BackendNotInstalledError, ExportError, ModelLoadError
from edgeopt.core.runtime import run_model
from edgeopt.exporting.from_source import SCRIPT_MODULE_REASON, SourceExportConfig, export_source
from edgeopt.exporting.huggingface import hide_broken_torchvision
from edgeopt.exporting.inputs import load_examples, parse_dynamic, parse_input_spec
from edgeopt.exporting.sources import detect_kind, load_source

FACTORY = """
import torch


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3))) * scale


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def not_a_module() -> int:
    return 3
"""


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``exportpkg.nets:build``, importable from a tmp folder on sys.path."""
    package = tmp_path / "lib" / "exportpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    for name in ("exportpkg", "exportpkg.nets"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return "exportpkg.nets:build"


def _module(source: str) -> torch.nn.Module:
    return load_source(source).module


def _assert_matches(path: Path, module: torch.nn.Module, *inputs: torch.Tensor) -> None:
    onnx.checker.check_model(onnx.load(path), full_check=True)
    names = [i.name for i in onnx.load(path).graph.input]
    got = run_model(path, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})
    with torch.no_grad():
        expected = module(*inputs)
    np.testing.assert_allclose(next(iter(got.values())), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_factory_with_dynamic_batch(factory: str, tmp_path: Path) -> None:
    out = tmp_path / "net.onnx"
    # given out of order: they are passed in forward's order
    config = SourceExportConfig(inputs=("scale:1:float32", "x:batchx3x8x8"))
    result = export_source(factory, out, config)
    assert result.kind == "factory" and result.report.exporter == "dynamo"
    assert result.report.fallback_reason is None
    assert result.inputs == {"x": ["batch", 3, 8, 8], "scale": [1]}
    assert len(result.output_errors) == 1 and 0 <= result.report.max_abs < 1e-5
    assert result.size == out.stat().st_size and result.nodes > 0
    _assert_matches(out, _module(factory), torch.randn(5, 3, 8, 8), torch.tensor([2.0]))


def test_torchscript_file_uses_the_torchscript_exporter(factory: str, tmp_path: Path) -> None:
    module = _module(factory)
    torch.jit.save(torch.jit.script(module), tmp_path / "net.ts")
    assert detect_kind(str(tmp_path / "net.ts")) == "torchscript"
    result = export_source(str(tmp_path / "net.ts"), tmp_path / "net.onnx",
                           SourceExportConfig(inputs=("x:batchx3x8x8", "scale:1")))
    assert (result.report.exporter, result.report.fallback_reason) == ("torchscript", SCRIPT_MODULE_REASON)
    assert result.report.max_abs < 1e-5
    _assert_matches(tmp_path / "net.onnx", module, torch.randn(3, 3, 8, 8), torch.tensor([0.5]))
    with pytest.raises(ExportError, match="exports only with the TorchScript exporter"):
        export_source(str(tmp_path / "net.ts"), tmp_path / "x.onnx",
                      SourceExportConfig(inputs=("x:1x3x8x8", "scale:1"), exporter="dynamo"))


def test_exported_program_uses_its_saved_example_inputs(factory: str, tmp_path: Path) -> None:
    module = _module(factory)
    example = (torch.randn(2, 3, 8, 8), torch.tensor([1.5]))
    torch.export.save(torch.export.export(module, example), tmp_path / "net.pt2")
    assert detect_kind(str(tmp_path / "net.pt2")) == "exported-program"
    result = export_source(str(tmp_path / "net.pt2"), tmp_path / "net.onnx")
    assert result.kind == "exported-program" and result.report.exporter == "dynamo"
    assert result.inputs == {"x": [2, 3, 8, 8], "scale": [1]} and result.report.max_abs < 1e-5
    _assert_matches(tmp_path / "net.onnx", module, *example)


def test_example_npz_with_dynamic_axis(factory: str, tmp_path: Path) -> None:
    np.savez(tmp_path / "ex.npz", x=np.ones((2, 3, 8, 8), np.float32), scale=np.ones(1, np.float32))
    assert list(load_examples(tmp_path / "ex.npz")) == ["x", "scale"]
    result = export_source(factory, tmp_path / "net.onnx",
                           SourceExportConfig(example=tmp_path / "ex.npz", dynamic=("x:0:n",)))
    assert result.inputs["x"] == ["n", 3, 8, 8]
    _assert_matches(tmp_path / "net.onnx", _module(factory), torch.randn(4, 3, 8, 8), torch.tensor([1.0]))


def test_atol_failure_writes_nothing(factory: str, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"max abs error .* exceeds atol 1e-15 .*nothing was written"):
        export_source(factory, tmp_path / "net.onnx",
                      SourceExportConfig(inputs=("x:1x3x8x8", "scale:1"), atol=1e-15))
    assert not (tmp_path / "net.onnx").exists()


def test_input_specs() -> None:
    spec = parse_input_spec("image:batchx3x224x224:float32")
    assert (spec.name, spec.shape, spec.dtype, dict(spec.dynamic)) == ("image", (2, 3, 224, 224), torch.float32,
                                                                      {0: "batch"})
    spec = parse_input_spec("ids:batch=4,max_len:int64")
    assert (spec.shape, spec.dtype, dict(spec.dynamic)) == ((4, 2), torch.int64, {0: "batch", 1: "max_len"})
    assert parse_input_spec("t::int32").shape == () and parse_input_spec("x:1x2").dtype == torch.float32
    assert parse_dynamic("x:0") == ("x", 0, "x_0") and parse_dynamic("x:1:seq") == ("x", 1, "seq")
    for bad, message in [("image", "expected NAME:DIMS"), ("x:1x3:float33", "unknown dtype 'float33'"),
                         ("x:1x-3", "dimension 1 is '-3'"), ("9x:1", "expected NAME:DIMS")]:
        with pytest.raises(ExportError, match=message):
            parse_input_spec(bad)
    with pytest.raises(ExportError, match="expected NAME:AXIS"):
        parse_dynamic("x:batch")


def test_source_errors(factory: str, tmp_path: Path) -> None:
    torch.save(_module(factory), tmp_path / "pickled.pt")
    (tmp_path / "folder").mkdir()
    cases = [
        (str(tmp_path / "missing.pt"), ModelLoadError, f"{tmp_path / 'missing.pt'}: does not exist"),
        (str(tmp_path / "pickled.pt"), ModelLoadError, "a torch.save checkpoint"),
        (str(tmp_path / "folder"), ModelLoadError, "a folder without config.json"),
        ("nosuchpkg.mod:build", ModelLoadError, "cannot import 'nosuchpkg.mod' .*No module named 'nosuchpkg'"),
        ("exportpkg.nets:nope", ModelLoadError, "has no 'nope'"),
        ("exportpkg.nets:not_a_module", ModelLoadError, r"not_a_module\(\) returned a int, not a torch.nn.Module"),
    ]
    for source, error, message in cases:
        with pytest.raises(error, match=message):
            load_source(source)
    with pytest.raises(ExportError, match=r"give 'x' too"):
        export_source(factory, tmp_path / "o.onnx", SourceExportConfig(inputs=("scale:1",)))
    with pytest.raises(ExportError, match="forward\\(\\) has no input 'y'"):
        export_source(factory, tmp_path / "o.onnx", SourceExportConfig(inputs=("y:1",)))
    with pytest.raises(ExportError, match="carries no example inputs"):
        export_source(factory, tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_huggingface_folder_without_transformers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.setitem(sys.modules, "transformers", None)  # find_spec() then says it is absent
    assert detect_kind(str(tmp_path)) == "huggingface"
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'edgeopt\[hf\]'"):
        load_source(str(tmp_path))


@pytest.fixture
def restore_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the library hiding a broken torchvision (sys.modules['torchvision'] = None) after the test."""
    if "torchvision" not in sys.modules:
        monkeypatch.setitem(sys.modules, "torchvision", None)
        monkeypatch.delitem(sys.modules, "torchvision")


def test_huggingface_bert_folder(tmp_path: Path, restore_torchvision: None) -> None:
    transformers = pytest.importorskip("transformers")
    hide_broken_torchvision()  # as load_source does, before transformers imports a model class
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    result = export_source(str(tmp_path / "bert"), tmp_path / "bert.onnx")
    assert result.kind == "huggingface" and result.report.exporter == "dynamo"
    assert result.inputs == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert list(result.output_errors) == ["last_hidden_state", "pooler_output"] and result.report.max_abs < 1e-4
    model = transformers.AutoModel.from_pretrained(tmp_path / "bert", local_files_only=True).eval()
    ids = torch.randint(0, 50, (3, 11))
    got = run_model(tmp_path / "bert.onnx", {"input_ids": ids.numpy(), "attention_mask": np.ones((3, 11), np.int64)})
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.ones(3, 11, dtype=torch.int64))
    np.testing.assert_allclose(got["last_hidden_state"], expected.last_hidden_state.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got["pooler_output"], expected.pooler_output.numpy(), rtol=1e-4, atol=1e-4)
