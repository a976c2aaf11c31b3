"""A recipe's ``export:`` section: start from a torch source, then run the passes on the export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeopt.core.errors import RecipeError
from edgeopt.core.runtime import run_model
from edgeopt.workflow.optimize import run_recipe
from edgeopt.workflow.recipe import load_recipe

RECIPE = """\
export:
  source: net.pt2
  inputs: ["input:batchx6:float32"]  # Sequential.forward(input)
  atol: 1.0e-4
output: out/net.onnx
passes: [cleanup]
"""


def test_export_section_runs_before_the_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU()).eval()
    program = torch.export.export(module, (torch.randn(2, 6),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "net.pt2")
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    monkeypatch.chdir(tmp_path.parent)  # paths are relative to the recipe file

    recipe = load_recipe(tmp_path / "recipe.yaml")
    assert recipe.export is not None and recipe.export.source == str(tmp_path / "net.pt2")
    assert recipe.model == tmp_path / "out" / "net.exported.onnx"
    run_recipe(recipe)

    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    for path in (recipe.model, recipe.output):
        np.testing.assert_allclose(next(iter(run_model(path, {"input": x}).values())), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("text", "message"), [
    ("output: o.onnx\npasses: [cleanup]\n", "model: give either model: (an ONNX file) or export:"),
    ("model: m.onnx\nexport: {source: a.pt2}\noutput: o.onnx\npasses: [cleanup]\n", "give either model:"),
    ("export: {source: a.pt2, input: []}\noutput: o.onnx\npasses: [cleanup]\n", "export.input: unknown key"),
    ("export: {inputs: []}\noutput: o.onnx\npasses: [cleanup]\n", "export.source: expects a file"),
    ("export: {source: a.pt2, inputs: ['x:1y2']}\noutput: o.onnx\npasses: [cleanup]\n",
     "export.inputs[0]: --input 'x:1y2': dimension 0 is '1y2'"),
    ("export: {source: a.pt2, exporter: jit}\noutput: o.onnx\npasses: [cleanup]\n",
     "export.exporter: expects auto, dynamo or torchscript"),
    ("export: {source: a.pt2, output: o.onnx}\noutput: o.onnx\npasses: [cleanup]\n",
     "export.output: is the recipe's output"),
])
def test_export_section_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match=None) as info:
        load_recipe(tmp_path / "r.yaml")
    assert message in str(info.value)
