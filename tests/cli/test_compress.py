"""Tests for ``edgeopt share-weights`` and ``edgeopt low-rank``, in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh
from rich.console import Console
from typer.testing import CliRunner

from edgeopt import cli
from edgeopt.cli import console
from edgeopt.core.runtime import create_session


def _mlp(path: Path, *, repeat: bool = False) -> Path:
    """x[N, 64] -> MatMul(W1 64x256) -> Relu -> MatMul(W2 256x256) -> Relu -> MatMul(W3 256x10) -> y.

    With ``repeat``, W2 is a second copy of a 256x256 layer applied twice (ALBERT-like).
    """
    rng = np.random.default_rng(0)
    w2 = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"], name="fc1"),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("MatMul", ["ar", "W2"], ["b"], name="fc2"),
             helper.make_node("Relu", ["b"], ["br"])]
    inits = [nh.from_array((rng.standard_normal((64, 256)) / 8).astype(np.float32), "W1"),
             nh.from_array(w2, "W2")]
    last = "br"
    if repeat:
        nodes += [helper.make_node("MatMul", ["br", "W2b"], ["c"], name="fc2b"),
                  helper.make_node("Relu", ["c"], ["cr"])]
        inits.append(nh.from_array(w2.copy(), "W2b"))
        last = "cr"
    nodes.append(helper.make_node("MatMul", [last, "W3"], ["y"], name="fc3"))
    inits.append(nh.from_array((rng.standard_normal((256, 10)) / 16).astype(np.float32), "W3"))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    return CliRunner()


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        np.savez(folder / f"b{i}.npz", x=rng.standard_normal((16, 64)).astype(np.float32))
    return folder


def _json(runner: CliRunner, *args: str) -> dict:
    result = runner.invoke(cli.app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_share_weights_codebook_shrinks_the_file_and_reports_fidelity(runner, tmp_path, calib):
    model = _mlp(tmp_path / "mlp.onnx")
    original = model.read_bytes()
    out = tmp_path / "out" / "c32.onnx"
    report = _json(runner, "share-weights", str(model), "-o", str(out), "--clusters", "32", "--calib", str(calib))
    assert model.read_bytes() == original
    assert report["size_before"]["raw"] / report["size_after"]["raw"] > 4
    assert [c["name"] for c in report["changes"]] == ["W1", "W2", "W3"]
    assert report["fidelity"]["samples"] == 64 and report["fidelity"]["cosine_mean"] > 0.99
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    got = create_session(out).run(None, {"x": x})[0]
    ref = create_session(model).run(None, {"x": x})[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.2  # ~5 % per layer, three layers


def test_share_weights_compressible_keeps_raw_size_and_shrinks_zipped(runner, tmp_path):
    model = _mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "dense16.onnx"
    report = _json(runner, "share-weights", str(model), "-o", str(out), "--form", "compressible")
    assert abs(report["size_after"]["raw"] - report["size_before"]["raw"]) < 1024
    assert report["size_before"]["zipped"] / report["size_after"]["zipped"] > 2
    weights = {t.name: nh.to_array(t) for t in onnx.load(out).graph.initializer}
    assert sorted(weights) == ["W1", "W2", "W3"] and all(len(np.unique(w)) == 16 for w in weights.values())
    per_channel = _json(runner, "share-weights", str(model), "-o", str(out), "--form", "compressible", "--per-channel",
                        "--min-elements", "10000")  # W1 and W2
    scaled = _json(runner, "share-weights", str(model), "-o", str(tmp_path / "s.onnx"), "--per-channel-scale")
    assert scaled["fidelity"]["sqnr_db"] > report["fidelity"]["sqnr_db"] - 3  # channels alike here: no loss
    weights = {t.name: nh.to_array(t) for t in onnx.load(out).graph.initializer}
    assert max(len(np.unique(weights[n][:, j])) for n in ("W1", "W2") for j in range(256)) <= 16
    assert len(np.unique(weights["W3"])) > 16  # 2,560 elements: below --min-elements
    assert per_channel["fidelity"]["sqnr_db"] > report["fidelity"]["sqnr_db"]


def test_across_layers_shares_repeated_layers(runner, tmp_path):
    model = _mlp(tmp_path / "mlp.onnx", repeat=True)
    out = tmp_path / "shared.onnx"
    # the clean-up already merges W2b, an exact copy of W2; without it the pass finds the pair
    cleaned = _json(runner, "share-weights", str(model), "-o", str(out), "--clusters", "0", "--across-layers", "0.01")
    assert cleaned["changes"] == [] and cleaned["parameters_after"] == cleaned["parameters_before"] - 256 * 256
    report = _json(runner, "share-weights", str(model), "-o", str(out), "--clusters", "0", "--across-layers", "0.01",
                   "--no-cleanup")
    assert [(c["name"], c["shared_with"]) for c in report["changes"]] == [("W2", "W2"), ("W2b", "W2")]
    assert report["fidelity"]["cosine_min"] > 0.999999
    assert sorted(t.name for t in onnx.load(out).graph.initializer) == ["W1", "W2", "W3"]


def test_low_rank_with_calibration_cuts_parameters(runner, tmp_path, calib):
    model = _mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "lr.onnx"
    report = _json(runner, "low-rank", str(model), "-o", str(out), "--params", "0.5", "--calib", str(calib))
    assert report["parameters_after"] < 0.6 * report["parameters_before"]
    assert report["macs_after"] < report["macs_before"]
    assert report["changes"] and all(c["params_after"] < c["params_before"] for c in report["changes"])
    assert 0.5 < report["fidelity"]["cosine_mean"] < 1.0


def test_tables_show_sizes_and_fidelity(runner, tmp_path):
    model = _mlp(tmp_path / "mlp.onnx")
    result = runner.invoke(cli.app, ["low-rank", str(model), "-o", str(tmp_path / "lr.onnx"), "--energy", "0.5"])
    assert result.exit_code == 0, result.output
    for text in ("file bytes", "zipped bytes", "parameters", "cosine of 'y'", "wrote"):
        assert text in result.stdout


def test_errors_are_one_line(monkeypatch, capsys, tmp_path):
    model = _mlp(tmp_path / "mlp.onnx")
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", "share-weights", str(model), "-o", str(tmp_path / "o.onnx"),
                                      "--clusters", "0"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    assert "nothing to do with --clusters 0; give --clusters K or --across-layers" in capsys.readouterr().err
    result = CliRunner().invoke(cli.app, ["share-weights", str(model), "-o", "o.onnx", "--form", "zip"])
    assert result.exit_code == 2


def test_fidelity_streams_the_sample_data(tmp_path):
    """The fidelity check holds one batch of samples at a time, not the whole set."""
    import weakref

    from edgeopt.sharing.compress import share_weights_file

    class Reader:
        def __init__(self) -> None:
            self.refs: list[weakref.ref] = []
            self.most_alive = 0

        def __iter__(self):
            rng = np.random.default_rng(0)
            for _ in range(8):
                self.most_alive = max(self.most_alive, sum(r() is not None for r in self.refs))
                x = rng.standard_normal((16, 64)).astype(np.float32)
                self.refs.append(weakref.ref(x))
                yield {"x": x}

    reader = Reader()
    result = share_weights_file(_mlp(tmp_path / "mlp.onnx"), tmp_path / "c.onnx", clusters=16,
                                calibration=reader, samples=1000)
    # two passes: one to cluster for the layers' outputs on the data, one for the fidelity check
    assert result.fidelity.samples == 8 * 16 and len(reader.refs) == 2 * 8
    assert reader.most_alive <= 2  # held: the batch being compared and perhaps the one before
