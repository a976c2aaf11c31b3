"""Models whose weights live in an external data file quantize like any other (ORT's quantizers
write the model they are given elsewhere: a proto that still points at the data file broke there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.cli.demo_model import INPUT_NAME, ONNX_MODEL, load_data
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import create_session, run_session
from edgeopt.quantization.quantize import QuantizeConfig, quantize_file


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_a_model_with_external_data_quantizes_and_agrees(mode: str, tmp_path: Path) -> None:
    source = save_model(load_model(ONNX_MODEL), tmp_path / "src" / "model.onnx", external_data=True)
    assert (source.parent / "model.onnx.data").is_file()
    data = load_data()
    calibration = [{INPUT_NAME: data.x_train[i:i + 32]} for i in range(0, 128, 32)]

    quantize_file(source, tmp_path / "int8.onnx", QuantizeConfig(mode=mode, samples=64, eval_samples=32),  # type: ignore[arg-type]
                  calibration=calibration)

    quantized = load_model(tmp_path / "int8.onnx")
    assert any(n.op_type in ("DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger") for n in quantized.graph)
    x = {INPUT_NAME: data.x_val[:200]}
    want = next(iter(run_session(create_session(ONNX_MODEL), x).values()))
    got = next(iter(run_session(create_session(tmp_path / "int8.onnx", optimize=False), x).values()))
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.98
    assert (source.parent / "model.onnx.data").is_file()  # the input is left as it was
