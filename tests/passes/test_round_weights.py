"""round-weights: float weights moved onto the int8 codes learned rounding picks, so that a converter
which rounds to nearest at max |w_c| / 127 (TFLite) lands on those codes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.calibration.rounding import weight_layers
from edgeopt.cli.demo_model import DATA, ONNX_MODEL, preprocess
from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import create_session, run_session
from edgeopt.passes import RoundWeightsPass
from edgeopt.pipeline import cleanup


def _digits() -> tuple[ir.Model, list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    model = load_model(ONNX_MODEL)
    cleanup()(model)
    data = np.load(DATA)
    train, held_out = preprocess(data["x_train"][:256]), preprocess(data["x_val"][:200])
    return model, [{"image": train[i:i + 64]} for i in range(0, 256, 64)], {"image": held_out}


def _nearest_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """What TFLite does to a weight: codes and scales at max |w_c| / 127, rounded to nearest."""
    moved = np.moveaxis(weight.astype(np.float64), axis, 0).reshape(weight.shape[axis], -1)
    scale = np.abs(moved).max(axis=1) / 127
    return np.round(moved / scale[:, None]), scale


def test_a_nearest_rounding_converter_finds_the_learned_codes() -> None:
    model, calib, _ = _digits()
    before = {layer.node: layer for layer in weight_layers(model)}
    rounded = model.clone()
    moved = RoundWeightsPass(calibration=calib)
    moved(rounded)
    assert moved.rounded == len(before) >= 3
    changed = 0
    for layer in weight_layers(rounded):
        original = before[layer.node]
        axis = layer.channel_axis
        codes, scale = _nearest_per_channel(layer.weight, axis)
        nearest, original_scale = _nearest_per_channel(original.weight, axis)
        np.testing.assert_allclose(scale, original_scale, rtol=1e-6)  # the converter's scales are unchanged
        values = np.moveaxis(layer.weight.astype(np.float64), axis, 0).reshape(codes.shape)
        np.testing.assert_allclose(values, codes * scale[:, None], atol=1e-6 * scale.max())  # exactly on the grid
        assert np.abs(codes).max() <= 127
        changed += int((codes != nearest).sum())
    assert changed > 0  # learned rounding is not rounding to nearest


def test_learned_codes_beat_nearest_rounding_on_held_out_data_in_onnx_runtime() -> None:
    model, calib, held_out = _digits()
    rounded = model.clone()
    RoundWeightsPass(calibration=calib)(rounded)
    nearest = model.clone()
    for node in nearest.graph:
        if node.op_type in ("Conv", "Gemm", "MatMul") and node.inputs[1] is not None \
                and node.inputs[1].const_value is not None:
            layer = next(la for la in weight_layers(model) if la.node == node.name)
            weight = node.inputs[1].const_value.numpy()
            codes, scale = _nearest_per_channel(weight, layer.channel_axis)
            shape = (weight.shape[layer.channel_axis], *np.delete(weight.shape, layer.channel_axis))
            values = np.moveaxis((codes * scale[:, None]).reshape(shape), 0, layer.channel_axis)
            node.inputs[1].const_value = ir.tensor(values.astype(np.float32), name=node.inputs[1].name)
    reference = run_session(create_session(model), held_out)["logits"]

    def sqnr(candidate: ir.Model) -> float:
        got = run_session(create_session(candidate), held_out)["logits"]
        return float(10 * np.log10((reference**2).sum() / ((reference - got) ** 2).sum()))

    assert sqnr(rounded) > sqnr(nearest) + 1.0


def test_round_weights_needs_data() -> None:
    with pytest.raises(CalibrationDataError, match="calibration data"):
        RoundWeightsPass()
