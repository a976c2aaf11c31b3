"""Tests for cluster-weights: k-means codebooks, in codebook and compressible form."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from edgeopt.core.codebook_format import pack_planes, unpack_planes
from edgeopt.core.errors import PassOptionError, UnsupportedOpsetError
from edgeopt.core.runtime import random_feeds, run_model
from edgeopt.passes import ClusterWeightsPass
from edgeopt.passes.codebook import kmeans_1d
from edgeopt.pipeline.runner import Pipeline, cleanup

LOSSY = {"rtol": 1.0, "atol": 1.0}
"""apply_pass tolerance for lossy clustering: checker and signature only; each test bounds the error."""


def _model(conv_w: np.ndarray, fc_w: np.ndarray, *, opset: int = 17, extra: bool = False) -> ir.Model:
    """x[1, C, 8, 8] -> Conv(conv_w) -> Flatten -> MatMul(fc_w) -> y (and Add(y, fc_bias) if extra)."""
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fc_w"], ["y"], name="fc")]
    inits = [nh.from_array(conv_w, "conv_w"), nh.from_array(fc_w, "fc_w")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, fc_w.shape[1]])]
    if extra:  # a float tensor that is not a weight of a listed op, and a weight that is a graph output
        nodes.append(helper.make_node("Add", ["y", "bias"], ["z"], name="add"))
        inits.append(nh.from_array(np.ones((1, fc_w.shape[1]), np.float32), "bias"))
        outputs += [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, fc_w.shape[1]]),
                    helper.make_tensor_value_info("fc_w", TensorProto.FLOAT, list(fc_w.shape))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, conv_w.shape[1], 8, 8])],
                              outputs, inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


def _weights(seed: int = 0, channels: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    conv = (rng.standard_normal((channels, 4, 3, 3)) / 6).astype(np.float32)
    fc = (rng.standard_normal((channels * 64, 10)) / 32).astype(np.float32)
    return conv, fc


def _expose(model: ir.Model, name: str) -> None:
    """Make the value that now feeds ``name``'s old slot a graph output."""
    node = next(n for n in model.graph if n.name == name)
    model.graph.outputs.append(node.inputs[1])


def _proto_bytes(model: ir.Model) -> int:
    return ir.serde.serialize_model(model).ByteSize()


@pytest.mark.parametrize("per_channel", [False, True])
def test_codebook_form_decodes_exactly_the_compressible_weights(per_channel, checker, op_counts):
    conv, fc = _weights()
    codebook, dense = _model(conv, fc), _model(conv, fc)
    ClusterWeightsPass(clusters=16, per_channel=per_channel, min_elements=256)(codebook)
    ClusterWeightsPass(clusters=16, per_channel=per_channel, form="compressible", min_elements=256)(dense)
    checker(codebook)
    _expose(codebook, "conv")
    _expose(codebook, "fc")
    feeds = random_feeds(codebook)
    got = run_model(codebook, feeds)
    conv_dense = next(n for n in dense.graph if n.name == "conv").inputs[1].const_value.numpy()
    fc_dense = next(n for n in dense.graph if n.name == "fc").inputs[1].const_value.numpy()
    decoded = [got[v.name] for v in codebook.graph.outputs[1:]]
    assert np.array_equal(decoded[0], conv_dense) and np.array_equal(decoded[1], fc_dense)
    np.testing.assert_allclose(got["y"], run_model(dense, feeds)["y"], rtol=1e-5, atol=1e-6)
    assert op_counts(codebook)["Gather"] == 2
    for array, axis in ((conv_dense, 0), (fc_dense, 1)):
        if per_channel:
            assert max(np.unique(np.take(array, i, axis=axis)).size for i in range(array.shape[axis])) <= 16
        else:
            assert np.unique(array).size == 16


def test_codebook_at_32_clusters_shrinks_the_tensor_over_5x_and_stays_close(apply_pass):
    rng = np.random.default_rng(1)
    fc = (rng.standard_normal((1024, 64)) / 32).astype(np.float32)
    model = _model(_weights()[0], fc)
    before = _proto_bytes(model)
    reference = model.clone()
    pass_ = ClusterWeightsPass(clusters=32, min_elements=4096)
    apply_pass(pass_, model, **LOSSY)
    [report] = pass_.last_report
    assert report.name == "fc_w" and report.clusters == 32
    assert report.bytes_before / report.bytes_after > 6.0  # 5 bits + a 32-entry codebook
    assert before - _proto_bytes(model) > 0.8 * fc.nbytes
    assert report.rel_error < 0.07
    feeds = random_feeds(model)
    got, expected = run_model(model, feeds)["y"], run_model(reference, feeds)["y"]
    # 32 levels of a Gaussian: ~5 % relative weight error, and about as much at the output
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.1


@pytest.mark.parametrize("form", ["codebook", "compressible"])
def test_few_distinct_values_cluster_losslessly(form, apply_pass):
    rng = np.random.default_rng(2)
    levels = np.array([-0.5, -0.1, 0.0, 0.2, 0.7], np.float32)
    conv = rng.choice(levels, size=(16, 4, 3, 3)).astype(np.float32)
    fc = rng.choice(levels, size=(1024, 10)).astype(np.float32)
    model = _model(conv, fc)
    pass_ = ClusterWeightsPass(clusters=8, form=form, min_elements=256)
    result = apply_pass(pass_, model)  # default tolerance: nothing changed
    assert result.modified == (form == "codebook")  # compressible: already has <= 8 values
    assert all(r.rel_error == 0 and r.clusters == 5 for r in pass_.last_report)


def test_compressible_form_keeps_dense_weights_with_k_values(apply_pass, op_counts):
    conv, fc = _weights()
    model = _model(conv, fc)
    pass_ = ClusterWeightsPass(clusters=16, form="compressible", min_elements=256)
    apply_pass(pass_, model, **LOSSY)
    assert all(r.rel_error < 0.15 for r in pass_.last_report)
    weights = [v.const_value.numpy() for v in model.graph.initializers.values()]
    assert sorted(w.shape for w in weights) == sorted([conv.shape, fc.shape])
    assert all(np.unique(w).size == 16 for w in weights)
    assert op_counts(model) == {"Conv": 1, "Flatten": 1, "MatMul": 1}
    assert not ClusterWeightsPass(clusters=16, form="compressible", min_elements=256)(model).modified


def test_cleanup_after_clustering_keeps_the_file_small(op_counts):
    """fold-constants must not fold the decode chain back into dense weights (small and large)."""
    conv, fc = _weights()  # fc: 10240 elements in 6400 packed bytes, below the folder's 8192 limit
    model = _model(conv, fc)
    dense_bytes = _proto_bytes(model)
    ClusterWeightsPass(clusters=32, min_elements=128)(model)
    clustered_bytes = _proto_bytes(model)
    feeds = random_feeds(model)
    expected = run_model(model, feeds)
    cleanup()(model)
    assert _proto_bytes(model) < 1.1 * clustered_bytes < dense_bytes / 3  # + inferred value_info
    assert op_counts(model)["Gather"] == 2
    np.testing.assert_allclose(run_model(model, feeds)["y"], expected["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("clusters", [2, 3, 16, 100, 256])
def test_every_index_width_decodes(clusters, apply_pass):
    rng = np.random.default_rng(clusters)
    levels = rng.standard_normal(clusters).astype(np.float32)
    fc = rng.choice(levels, size=(1024, 10)).astype(np.float32)  # exactly `clusters` values: lossless
    model = _model(_weights()[0], fc)
    # lossless, yet ORT multiplies by a computed weight in another order than by a constant one
    apply_pass(ClusterWeightsPass(clusters=clusters, min_elements=4096), model, rtol=1e-4, atol=1e-5)
    stored = {v.name: v.const_value.numpy() for v in model.graph.initializers.values()}
    indices = [a for a in stored.values() if a.dtype == np.uint8 and a.size > 1]  # not the zero point
    bits = int(np.ceil(np.log2(clusters)))
    assert sum(a.size for a in indices) == (fc.size if bits == 8 else bits * fc.size // 8)


def test_pack_false_stores_one_byte_per_index(apply_pass, op_counts):
    conv, fc = _weights()
    model = _model(conv, fc)
    apply_pass(ClusterWeightsPass(clusters=16, pack=False, min_elements=4096), model, **LOSSY)
    [indices] = [v.const_value.numpy() for v in model.graph.initializers.values()
                 if v.dtype == ir.DataType.UINT8 and v.const_value.size > 1]
    assert indices.shape == (fc.size,)
    assert "MatMul" in op_counts(model) and op_counts(model)["Gather"] == 1


def test_leaves_alone_graph_outputs_other_ops_and_small_tensors(apply_pass):
    conv, fc = _weights()
    model = _model(conv, fc, extra=True)
    pass_ = ClusterWeightsPass(clusters=4, min_elements=1000)
    apply_pass(pass_, model)
    assert [r.name for r in pass_.last_report] == []  # conv_w: 576 elements; fc_w: a graph output
    assert set(model.graph.initializers) == {"conv_w", "fc_w", "bias"}


def test_weights_in_constant_nodes_are_clustered(apply_pass, op_counts):
    conv, fc = _weights()
    model = _model(conv, fc)
    value = model.graph.initializers.pop("fc_w")
    constant = ir.Node("", "Constant", [], attributes=[ir.AttrTensor("value", value.const_value)])
    model.graph.insert_before(model.graph.node(0), constant)
    value.replace_all_uses_with(constant.outputs[0])
    constant.outputs[0].name = "fc_w_const"
    apply_pass(ClusterWeightsPass(clusters=16, min_elements=4096), model, **LOSSY)
    assert op_counts(model)["Constant"] == 0 and op_counts(model)["Gather"] == 1


def test_second_run_changes_nothing():
    conv, fc = _weights()
    model = _model(conv, fc)
    assert ClusterWeightsPass(clusters=16, min_elements=256)(model).modified
    assert not ClusterWeightsPass(clusters=16, min_elements=256)(model).modified


def test_codebook_needs_opset_10_but_compressible_does_not(apply_pass):
    conv, fc = _weights()
    with pytest.raises(UnsupportedOpsetError, match="opset 9 is below 10.*cluster-weights"):
        Pipeline([("cluster-weights", {"clusters": 16})]).run(_model(conv, fc, opset=9))
    assert ClusterWeightsPass(clusters=16, form="compressible")(_model(conv, fc, opset=9)).modified


def test_bad_options_are_refused():
    with pytest.raises(PassOptionError, match="clusters must be 2 to 256"):
        ClusterWeightsPass(clusters=300)
    with pytest.raises(PassOptionError, match="cannot cluster weights of \\['Add'\\]"):
        ClusterWeightsPass(op_types=("Add",))


def test_kmeans_1d_matches_scikit_learn_on_sorted_data():
    """Our sorted-array Lloyd reaches an inertia no worse than scikit-learn's KMeans (1-D)."""
    cluster = pytest.importorskip("sklearn.cluster")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(1500), rng.laplace(size=500) * 3])
    centroids, labels = kmeans_1d(values, 16)
    ours = float(((values - centroids[labels]) ** 2).sum())
    with threadpoolctl.threadpool_limits(1):  # its OpenMP threads crawl on a busy machine
        theirs = cluster.KMeans(16, n_init=2, random_state=0).fit(values[:, None]).inertia_
    assert ours <= theirs * 1.02
    assert np.array_equal(labels, np.abs(values[:, None] - centroids[None, :]).argmin(1))


def test_bit_planes_round_trip():
    labels = np.random.default_rng(4).integers(0, 32, size=1001)
    packed = pack_planes(labels, 5)
    assert packed.shape == (5, 126) and packed.dtype == np.uint8
    assert np.array_equal(unpack_planes(packed, labels.size), labels)


def test_channel_scale_shares_one_codebook_across_scaled_channels(apply_pass):
    conv, fc = _weights()
    conv *= np.logspace(-2, 1, conv.shape[0], dtype=np.float32)[:, None, None, None]  # channels 1000x apart
    scaled, dense = _model(conv, fc), _model(conv, fc)
    pass_ = ClusterWeightsPass(clusters=16, min_elements=256, channel_scale=True)
    apply_pass(pass_, scaled, **LOSSY)
    ClusterWeightsPass(clusters=16, min_elements=256, channel_scale=True, form="compressible")(dense)
    _expose(scaled, "conv")
    feeds = random_feeds(scaled)
    decoded = run_model(scaled, feeds)[scaled.graph.outputs[1].name]
    expected = dense.graph.initializers["conv_w"].const_value.numpy()
    assert np.array_equal(decoded, expected)
    per_channel_error = np.abs(decoded - conv).max(axis=(1, 2, 3)) / np.abs(conv).max(axis=(1, 2, 3))
    assert per_channel_error.max() < 0.3  # every channel keeps its shape, however small
    plain_report = ClusterWeightsPass(clusters=16, min_elements=256)
    plain_report(_model(conv, fc))
    assert pass_.last_report[0].rel_error < plain_report.last_report[0].rel_error
    conv_report = pass_.last_report[0]
    assert conv_report.bytes_after == 4 * conv.size // 8 + 16 * 4 + 16 * 4  # indices, codebook, scales
    assert not ClusterWeightsPass(clusters=16, min_elements=256, channel_scale=True,
                                  form="compressible")(dense).modified


def test_second_run_leaves_the_decode_chain_alone_even_after_a_file_round_trip(tmp_path):
    """The chain's own small constants (the bit-plane weights feed a MatMul) are never clustered."""
    from edgeopt.core.model_io import load_model, save_model

    conv, fc = _weights()
    model = _model(conv, fc)
    assert ClusterWeightsPass(clusters=16, min_elements=1)(model).modified
    again = ClusterWeightsPass(clusters=16, min_elements=1)
    assert not again(model).modified and again.last_report == []
    reloaded = load_model(save_model(model, tmp_path / "clustered.onnx"))
    assert not ClusterWeightsPass(clusters=16, min_elements=1)(reloaded).modified


def test_codebook_form_survives_cleanup_and_ort_default_optimizations(tmp_path):
    """After ``cleanup`` the file keeps the codebook; ORT, optimizing at load, computes the same."""
    from edgeopt.core.model_io import load_model, save_model
    from edgeopt.core.runtime import create_session, run_session

    conv, fc = _weights()
    model = _model(conv, fc)
    ClusterWeightsPass(clusters=32, min_elements=128)(model)
    feeds = random_feeds(model)
    expected = run_model(model, feeds)["y"]
    cleanup()(model)
    reloaded = load_model(save_model(model, tmp_path / "clean.onnx"))
    assert sum(n.op_type == "Gather" for n in reloaded.graph) == 2
    got = run_session(create_session(reloaded, optimize=True), feeds)["y"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
