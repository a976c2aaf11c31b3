"""BatchNorm statistics re-estimated after pruning, where BN stays in the graph (model not cleaned up)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from edgeopt.channels.bn_reestimate import reestimate_batchnorm
from edgeopt.core.runtime import run_model
from edgeopt.passes import PruneChannelsPass
from edgeopt.testing import prune_models

CNN_BN = """
net (float[N,3,8,8] x) => (float[N,4] y) {
    c1 = Conv<pads=[1,1,1,1]>(x, w1)
    n1 = BatchNormalization(c1, s1, b1, m1, v1)
    r1 = Relu(n1)
    c2 = Conv<pads=[1,1,1,1]>(r1, w2)
    n2 = BatchNormalization(c2, s2, b2, m2, v2)
    r2 = Relu(n2)
    p = GlobalAveragePool(r2)
    f = Flatten(p)
    y = Gemm<transB=1>(f, wf, bf)
}
"""


def _data(seed: int, batches: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((16, 3, 8, 8)).astype(np.float32)} for _ in range(batches)]


def _stats(model: ir.Model, name: str, data: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance of ``name`` over ``data`` (the model run as is)."""
    work = model.clone()
    work.graph.outputs.append(next(v for node in work.graph for v in node.outputs if v.name == name))
    values = np.concatenate([run_model(work, feeds)[name] for feeds in data]).astype(np.float64)
    return values.mean(axis=(0, 2, 3)), values.var(axis=(0, 2, 3))


def _model(calibration: list[dict[str, np.ndarray]]) -> ir.Model:
    """Random weights; BN statistics set to the true statistics of their inputs on ``calibration``."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((16, 3, 3, 3)), "w2": rng.standard_normal((16, 16, 3, 3)) * 0.3,
         "wf": rng.standard_normal((4, 16)), "bf": np.zeros(4)}
    for i in (1, 2):
        w |= {f"s{i}": rng.uniform(0.5, 1.5, 16), f"b{i}": rng.standard_normal(16) * 0.1,
              f"m{i}": np.zeros(16), f"v{i}": np.ones(16)}
    for i in (1, 2):  # calibrate BN1 first: BN2's input depends on it
        model = prune_models.build(CNN_BN, w)
        w[f"m{i}"], w[f"v{i}"] = _stats(model, f"c{i}", calibration)
    return prune_models.build(CNN_BN, w)


def _const(model: ir.Model, name: str) -> np.ndarray:
    value = model.graph.initializers[name].const_value
    assert value is not None
    return value.numpy()


def test_reestimated_statistics_are_those_of_the_pruned_inputs_and_reduce_the_error() -> None:
    calibration, held = _data(1), _data(2, batches=2)
    original = _model(calibration)
    expected = np.concatenate([run_model(original, f)["y"] for f in held])

    plain = _model(calibration)
    PruneChannelsPass(ratio=0.5, round_to=4)(plain)
    assert _const(plain, "w2").shape == (8, 8, 3, 3)  # both groups halved; BN2 now sees other inputs
    reestimated = _model(calibration)
    pass_ = PruneChannelsPass(ratio=0.5, round_to=4, reestimate_bn=True, calibration=calibration)
    pass_(reestimated)
    assert pass_.bn_reestimated == 2

    np.testing.assert_allclose(_const(reestimated, "m1"), _const(plain, "m1"), rtol=1e-4, atol=1e-4)  # unchanged
    # BN1's statistics are exact, so BN2's input is nearly what the pruned model computes (BN1 normalizes
    # each batch by that batch's statistics while re-estimating, as PyTorch does: hence the tolerance)
    mean2, var2 = _stats(plain, "c2", calibration)
    np.testing.assert_allclose(_const(reestimated, "m2"), mean2, rtol=1e-2, atol=1e-3)
    np.testing.assert_allclose(_const(reestimated, "v2"), var2, rtol=1e-2, atol=1e-3)
    assert not np.allclose(_const(plain, "v2"), var2, rtol=0.05)  # the stale statistics were off

    def error(model: ir.Model) -> float:
        return float(np.mean((np.concatenate([run_model(model, f)["y"] for f in held]) - expected) ** 2))

    assert error(reestimated) <= error(plain)


def test_no_batchnorm_changes_nothing() -> None:
    model = prune_models.residual_cnn()
    assert reestimate_batchnorm(model, _data(0, batches=1)) == 0
