"""Tests for clamp-mask-constants: a -3.4e38 additive mask becomes -100, outputs unchanged."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import run_model
from edgeopt.passes import ClampMaskConstantsPass, QuantizeStaticPass

# Masked attention scores over 6 keys: scores + where(mask, 0, MIN), then softmax.
TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
attend (float[N, 6] scores, bool[N, 6] keep) => (float[N, 6] probs)
{
    zero = Constant<value = float {0.0}>()
    masked = Where(keep, zero, NEG)
    shifted = Add(scores, masked)
    probs = Softmax<axis = 1>(shifted)
}
"""
MIN = np.finfo(np.float32).min


def _model() -> ir.Model:
    proto = onnx.parser.parse_model(TEXT)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(MIN, np.float32), "NEG"))
    return ir.serde.deserialize_model(proto)


def _feeds(rows: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    keep = np.ones((rows, 6), bool)
    keep[:, 4:] = False  # two padded positions
    return {"scores": (rng.standard_normal((rows, 6)) * 3).astype(np.float32), "keep": keep}


def test_clamps_the_mask_and_keeps_outputs(apply_pass: Callable[..., ir.passes.PassResult]) -> None:
    model = _model()

    result = apply_pass(ClampMaskConstantsPass(), model, _feeds(), rtol=1e-6, atol=1e-30)

    assert result.modified
    assert float(model.graph.initializers["NEG"].const_value.numpy()) == -100.0  # type: ignore[union-attr]
    assert run_model(model, _feeds())["probs"][:, 4:].max() < 1e-30  # padded keys still get no weight
    assert not ClampMaskConstantsPass()(model).modified  # idempotent


def test_constant_nodes_and_minus_inf_too_but_not_ordinary_values() -> None:
    proto = onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    m (float[3] x) => (float[3] y)
    {
        c = Constant<value = float[3] {-inf, -5.0, 7.0}>()
        y = Add(x, c)
    }
    """)
    model = ir.serde.deserialize_model(proto)

    assert ClampMaskConstantsPass(limit=50.0)(model).modified

    value = next(iter(model.graph)).attributes["value"].as_tensor().numpy()
    np.testing.assert_array_equal(value, [-50.0, -5.0, 7.0])
    np.testing.assert_array_equal(run_model(model, {"x": np.zeros(3, np.float32)})["y"], [-50.0, -5.0, 7.0])


def test_makes_a_masked_softmax_quantizable() -> None:
    calibration = [_feeds(8)]
    reference = run_model(_model(), calibration[0])["probs"]

    errors = {}
    for clamp in (False, True):
        model = _model()
        if clamp:
            ClampMaskConstantsPass()(model)
        QuantizeStaticPass(calibration=calibration, activation_type="uint16")(model)
        errors[clamp] = float(np.abs(run_model(model, calibration[0])["probs"] - reference).max())

    assert errors[True] < 0.01 < errors[False], errors


def test_rejects_bad_limits() -> None:
    with pytest.raises(PassOptionError, match="0 < limit < threshold"):
        ClampMaskConstantsPass(limit=0.0)
