"""``share_weights_file`` and ``low_rank_file``, the weight-sharing road as library calls."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.core import load_model, run_model
from edgeopt.sharing import low_rank_file, share_weights_file


def _two_layer_mlp(path: Path) -> Path:
    """x[N, 32] -> MatMul(W1 32x128) -> Relu -> MatMul(W2 128x8) -> y."""
    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((32, 128)) / 6).astype(np.float32)
    w2 = (rng.standard_normal((128, 8)) / 11).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["hr"]),
         helper.make_node("MatMul", ["hr", "W2"], ["y"], name="fc2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"x": rng.standard_normal((16, 32)).astype(np.float32)} for _ in range(4)]


def test_clustering_keeps_k_values_per_tensor_and_reports_true_fidelity(tmp_path: Path) -> None:
    source = _two_layer_mlp(tmp_path / "mlp.onnx")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    result = share_weights_file(source, tmp_path / "k16.onnx", clusters=16, form="compressible",
                                min_elements=512, calibration=_batches())
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(result.output)).graph.initializer}
    assert len(np.unique(weights["W1"])) <= 16 and len(np.unique(weights["W2"])) <= 16
    assert result.size_after.zipped < result.size_before.zipped
    # the reported fidelity is what ONNX Runtime computes on the same batches
    original, clustered = load_model(source), load_model(result.output)
    ref = np.concatenate([run_model(original, b)["y"] for b in _batches()])
    got = np.concatenate([run_model(clustered, b)["y"] for b in _batches()])
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert result.fidelity.samples == len(ref) == 64
    assert result.fidelity.cosine_mean == pytest.approx(float(cosine.mean()), abs=1e-4)
    assert result.fidelity.cosine_min == pytest.approx(float(cosine.min()), abs=1e-4)
    assert result.fidelity.cosine_mean > 0.95  # 16 values per tensor keep this MLP close


def test_low_rank_cuts_parameters_of_the_wide_layer(tmp_path: Path) -> None:
    source = _two_layer_mlp(tmp_path / "mlp.onnx")
    result = low_rank_file(source, tmp_path / "lr.onnx", energy=0.6, min_elements=512)
    assert result.after.parameters < result.before.parameters
    assert result.after.ops.get("MatMul", 0) > result.before.ops["MatMul"]  # W1 became two factors
    onnx.checker.check_model(onnx.load(str(result.output)), full_check=True)
    out = run_model(load_model(result.output), _batches()[0])["y"]
    assert out.shape == (16, 8) and np.isfinite(out).all()
