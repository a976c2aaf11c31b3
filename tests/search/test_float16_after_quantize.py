"""float16 on quantized models: the pass keeps Quantize/DequantizeLinear float32 (a float16 scale is an invalid
model below opset 19), and the search refuses float16 after static quantization before running anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgeopt.cli.demo_model import ONNX_MODEL
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import run_model
from edgeopt.passes.convert_fp16 import ConvertFloat16Pass
from edgeopt.quantization.quantize import QuantizeConfig, quantize_file
from edgeopt.search import STAGES, Cache, Evaluator, select

TABLE = """
<ir_version: 8, opset_import: ["" : 13]>
net (int64[1, 8] ids) => (float[1, 64] y)
{
    e = Gather(E, ids)
    h = MatMul(e, W)
    r = Relu(h)
    y = ReduceMean<axes = [1], keepdims = 0>(r)
}
"""


def _table_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model(TABLE)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((100, 64)).astype(np.float32), "E"),
        onnx.numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32) * 0.1, "W"),
    ])
    onnx.save(proto, path)


def _dequantize_scales(model: ir.Model) -> set[ir.DataType | None]:
    return {n.inputs[1].dtype for n in model.graph if n.op_type == "DequantizeLinear" and n.inputs[1] is not None}


@pytest.mark.parametrize("mode", ["static", "weight-only"])
def test_float16_of_a_quantized_model_loads_in_ort_and_matches(mode: str, tmp_path: Path) -> None:
    if mode == "static":  # QDQ on weights and activations (the search's trial 22 on EfficientNet-Lite0)
        source, feeds = Path(ONNX_MODEL), {"image": np.random.default_rng(0).random((1, 1, 8, 8), np.float32)}
        config = QuantizeConfig(mode="static", per_channel=True, samples=16, eval_samples=8)
        calibration: str | None = "random:16"
    else:  # int8 lookup table decoded by DequantizeLinear, MatMulNBits for the MatMul
        source, feeds = tmp_path / "table.onnx", {"ids": np.arange(8, dtype=np.int64)[None] * 7}
        _table_model(source)
        config = QuantizeConfig(mode="weight-only", bits=8, embedding_bits=8, samples=16, eval_samples=8)
        calibration = None
    quantize_file(source, tmp_path / "q.onnx", config, calibration=calibration)
    quantized = load_model(tmp_path / "q.onnx")
    assert _dequantize_scales(quantized) == {ir.DataType.FLOAT}
    converted = quantized.clone()

    assert ConvertFloat16Pass()(converted).modified

    onnx.checker.check_model(ir.serde.serialize_model(converted), full_check=True)
    assert _dequantize_scales(converted) == {ir.DataType.FLOAT}  # ORT rejected float16 scales here before
    assert any(n.op_type == "Cast" and n.outputs[0].dtype == ir.DataType.FLOAT16 for n in converted.graph)
    expected, got = run_model(quantized, feeds), run_model(converted, feeds)  # ORT, optimizations off
    for name, value in expected.items():
        # float16 rounds each activation to an 11-bit mantissa (relative 5e-4), a few roundings per path
        np.testing.assert_allclose(got[name], value, rtol=2e-2, atol=2e-2 * float(np.abs(value).max()))
    assert not ConvertFloat16Pass()(converted).modified  # idempotent


def test_the_search_refuses_float16_after_static_int8_before_running_it(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    stages = select(STAGES, ("quantize", "float16"), load_model(ONNX_MODEL))
    evaluator = Evaluator(ONNX_MODEL, stages=stages, calibration="random:16", data="random:8", target="ort-cpu",
                          cache=cache, samples=16)
    static = ("quantize", {"mode": "static", "per_channel": True, "budget": 0.04})
    outcome = evaluator.evaluate((static, ("float16", {"precision": "float16"})))
    assert outcome.scored is None and outcome.error is not None
    assert outcome.error.startswith("float16 after static quantization:") and "Use one of the two" in outcome.error
    assert cache.misses == cache.hits == 0  # refused before the quantize stage ran
    dynamic = evaluator.evaluate((("quantize", {"mode": "dynamic", "per_channel": False}),
                                  ("float16", {"precision": "float16"})))
    assert dynamic.error is None or "float16 after" not in dynamic.error, dynamic.error  # only static is refused
    assert cache.misses > 0
