"""Data-aware clustering (cluster-weights with calibration data): K values kept, outputs closer on unseen data."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.runtime import run_model
from edgeopt.passes import ClusterWeightsPass
from edgeopt.passes.codebook import kmeans_1d


def _mlp(*, gemm: bool = False) -> ir.Model:
    """ids[N, 6] -> Gather(table 300x32) -> ReduceMean -> scale features -> MatMul(W1) -> Relu -> W2 -> y.

    The feature scales spread over 100x, like the outlier features after a transformer's
    LayerNorm: the case where weights that look alike are not alike for the outputs.
    With ``gemm``, the second layer is ``Gemm(transB=1)``.
    """
    rng = np.random.default_rng(0)
    table = rng.standard_normal((300, 32)).astype(np.float32)
    w1 = (rng.standard_normal((32, 96)) / 6).astype(np.float32)
    w2 = (rng.standard_normal((96, 8)) / 10).astype(np.float32)
    scale = np.logspace(-1, 1, 32, dtype=np.float32)[rng.permutation(32)]
    second = (helper.make_node("Gemm", ["hr", "W2t"], ["y"], name="fc2", transB=1) if gemm
              else helper.make_node("MatMul", ["hr", "W2"], ["y"], name="fc2"))
    weights = [nh.from_array(table, "table"), nh.from_array(w1, "W1"), nh.from_array(scale, "scale"),
               nh.from_array(np.array([1], np.int64), "axis"),
               nh.from_array(np.ascontiguousarray(w2.T), "W2t") if gemm else nh.from_array(w2, "W2")]
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("ReduceMean", ["e", "axis"], ["m"], keepdims=0),
         helper.make_node("Mul", ["m", "scale"], ["s"]),
         helper.make_node("MatMul", ["s", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["hr"]),
         second],
        "mlp", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], weights)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _ids(seed: int, batches: int = 8) -> list[dict[str, np.ndarray]]:
    """Token ids drawn from a skewed distribution over the first 100 rows (the rest are rare)."""
    rng = np.random.default_rng(seed)
    p = np.r_[np.full(100, 0.99 / 100), np.full(200, 0.01 / 200)]
    return [{"ids": rng.choice(300, size=(32, 6), p=p).astype(np.int64)} for _ in range(batches)]


def _error(model: ir.Model, reference: ir.Model, data: list[dict[str, np.ndarray]]) -> float:
    """Relative output error in ONNX Runtime (optimizations off)."""
    got = np.concatenate([run_model(model, feeds)["y"] for feeds in data])
    want = np.concatenate([run_model(reference, feeds)["y"] for feeds in data])
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _decoded(model: ir.Model, names: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense weights the codebook form's decode chains give in ONNX Runtime."""
    proto = ir.serde.serialize_model(model)
    fetched = []
    for node in proto.graph.node:
        for slot, name in enumerate(node.input):
            if name.endswith("_decoded") and name[:-len("_decoded")] in names:
                fetched.append(name)
                assert slot in (0, 1)
    proto.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in fetched)
    outputs = run_model(proto, feeds)
    return {n[:-len("_decoded")]: outputs[n] for n in fetched}


@pytest.mark.parametrize("gemm", [False, True])
def test_data_aware_codebooks_keep_k_values_and_cut_the_unseen_output_error(gemm: bool, checker) -> None:
    reference = _mlp(gemm=gemm)
    second = "W2t" if gemm else "W2"
    plain, aware = _mlp(gemm=gemm), _mlp(gemm=gemm)
    ClusterWeightsPass(clusters=8, min_elements=256)(plain)
    pass_ = ClusterWeightsPass(clusters=8, min_elements=256, calibration=_ids(1), samples=256)
    assert pass_(aware).modified
    checker(aware)
    decoded = _decoded(aware, ["table", "W1", second], _ids(2, 1)[0])
    for name, weights in decoded.items():
        original = reference.graph.initializers[name].const_value.numpy()
        assert weights.shape == original.shape
        assert np.unique(weights).size == 8, name  # exactly K values per tensor, all used
    unseen = _ids(3)
    plain_error, aware_error = _error(plain, reference, unseen), _error(aware, reference, unseen)
    assert aware_error < 0.8 * plain_error, (aware_error, plain_error)  # measured 0.26 vs 0.35
    assert {row.name for row in pass_.last_report} == {"table", "W1", second}


def test_data_aware_compressible_and_codebook_forms_decode_alike() -> None:
    codebook, dense = _mlp(), _mlp()
    ClusterWeightsPass(clusters=8, min_elements=256, calibration=_ids(1))(codebook)
    ClusterWeightsPass(clusters=8, min_elements=256, calibration=_ids(1), form="compressible")(dense)
    for name, weights in _decoded(codebook, ["table", "W1", "W2"], _ids(2, 1)[0]).items():
        assert np.array_equal(weights, dense.graph.initializers[name].const_value.numpy()), name
    assert not ClusterWeightsPass(clusters=8, min_elements=256, calibration=_ids(1),
                                  form="compressible")(dense).modified


@pytest.mark.parametrize("gemm", [False, True], ids=["matmul", "gemm-transB"])
@pytest.mark.parametrize("layout", ["per_channel", "channel_scale"])
def test_data_aware_per_channel_codebooks_beat_plain_ones(layout: str, gemm: bool) -> None:
    reference, plain, aware = _mlp(gemm=gemm), _mlp(gemm=gemm), _mlp(gemm=gemm)
    options = {layout: True}
    ClusterWeightsPass(clusters=4, min_elements=256, **options)(plain)  # type: ignore[arg-type]
    ClusterWeightsPass(clusters=4, min_elements=256, calibration=_ids(1), **options)(aware)  # type: ignore[arg-type]
    unseen = _ids(3)
    assert _error(aware, reference, unseen) < _error(plain, reference, unseen)
    second = "W2t" if gemm else "W2"
    decoded = _decoded(aware, ["W1", second], unseen[0])
    w1 = decoded["W1"]
    w2 = decoded[second].T if gemm else decoded[second]  # (in, out) either way
    if layout == "per_channel":
        assert max(np.unique(column).size for column in w1.T) == 4  # K per output channel
        assert max(np.unique(column).size for column in w2.T) == 4
    else:  # one shared codebook of 4 values, scaled per output channel
        for w in (w1, w2):
            ratios = w / np.abs(w).max(axis=0)
            assert np.unique(np.round(ratios, 5)).size <= 4 * w.shape[1]


def test_constant_indices_and_random_data_leave_clustering_to_the_weights() -> None:
    """A table read at constant indices (position ids) has no data to learn from, and ``random:N``
    is not sample data: both cluster as plain k-means would, without failing."""
    model = _mlp()
    positions = ir.Value(name="positions", const_value=ir.tensor(np.arange(6, dtype=np.int64)[None], name="positions"))
    model.graph.register_initializer(positions)
    embed = next(node for node in model.graph if node.name == "embed")
    embed.replace_input_with(1, positions)
    plain, aware, random_data = model.clone(), model.clone(), model.clone()
    ClusterWeightsPass(clusters=4, min_elements=256)(plain)
    ClusterWeightsPass(clusters=4, min_elements=256, calibration=_ids(1))(aware)
    ClusterWeightsPass(clusters=4, min_elements=256, calibration="random:4")(random_data)
    unseen = _ids(3)
    names = ["table", "W1", "W2"]
    plain_weights = _decoded(plain, names, unseen[0])
    random_weights, aware_table = _decoded(random_data, names, unseen[0]), _decoded(aware, ["table"], unseen[0])
    for name in names:
        assert np.array_equal(random_weights[name], plain_weights[name]), name
    assert np.array_equal(aware_table["table"], plain_weights["table"])
    assert _error(aware, model, unseen) < _error(plain, model, unseen)  # the matrices still use the data


def test_frequent_table_rows_get_the_closer_values() -> None:
    reference, aware = _mlp(), _mlp()
    ClusterWeightsPass(clusters=4, min_elements=256, calibration=_ids(1), form="compressible")(aware)
    original = reference.graph.initializers["table"].const_value.numpy()
    clustered = aware.graph.initializers["table"].const_value.numpy()
    row_error = np.linalg.norm(clustered - original, axis=1) / np.linalg.norm(original, axis=1)
    assert row_error[:100].mean() < row_error[100:].mean()


def test_weighted_kmeans_matches_scikit_learn_with_sample_weights() -> None:
    cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(5)
    values = rng.standard_normal(2000)
    weights = np.exp(2 * rng.standard_normal(2000))
    centroids, labels = kmeans_1d(values, 8, weights=weights)
    ours = float((weights * (values - centroids[labels]) ** 2).sum())
    with threadpoolctl.threadpool_limits(1):
        fit = cluster.KMeans(8, n_init=2, random_state=0).fit(values[:, None], sample_weight=weights)
    assert ours <= fit.inertia_ * 1.02
    unweighted, _ = kmeans_1d(values, 8)
    assert not np.allclose(centroids, unweighted)  # the weights do move the centroids


def test_weighted_kmeans_with_undriven_values_stays_finite() -> None:
    """Data-aware weights are 0 for input channels the data never drives (a dead ReLU6 channel of
    EfficientNet-Lite0): its weights take the nearest centroid, and no centroid becomes NaN."""
    rng = np.random.default_rng(6)
    values = rng.standard_normal((64, 32))
    weights = np.ones((1, 32))
    weights[:, :20] = 0.0  # 20 of 32 input channels never driven
    centroids, labels = kmeans_1d(values, 16, weights=weights)
    assert np.isfinite(centroids).all() and 1 < centroids.size <= 16
    driven = values[:, 20:].ravel()
    assert driven.min() - 1e-9 <= centroids.min() and centroids.max() <= driven.max() + 1e-9  # fitted to driven ones
    error = np.abs(values.ravel() - centroids[labels])
    nearest = np.abs(values.ravel()[:, None] - centroids[None, :]).min(axis=1)
    np.testing.assert_allclose(error, nearest)  # every value, driven or not, on its nearest centroid
    all_zero, _ = kmeans_1d(values, 16, weights=np.zeros((1, 32)))
    np.testing.assert_allclose(all_zero, kmeans_1d(values, 16)[0])  # nothing driven: counted once each


def test_the_model_file_keeps_its_signature(tmp_path) -> None:
    model = _mlp()
    ClusterWeightsPass(clusters=8, min_elements=256, calibration=_ids(1))(model)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["ids"] and [o.name for o in proto.graph.output] == ["y"]


def test_a_codebook_that_comes_out_non_finite_is_refused_not_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard behind the undriven-channel fix: a NaN centroid must stop the pass with the tensor's name."""
    from edgeopt.core.errors import NonFiniteWeightsError
    from edgeopt.passes import cluster_weights

    model = _mlp()
    real = cluster_weights.cluster

    def with_nan(*args: Any, **kwargs: Any) -> Any:
        book = real(*args, **kwargs)
        book.codebook[..., 0] = np.nan
        return book

    monkeypatch.setattr(cluster_weights, "cluster", with_nan)
    with pytest.raises(NonFiniteWeightsError, match="codebook of .* came out non-finite"):
        ClusterWeightsPass(clusters=8, min_elements=256)(model)
