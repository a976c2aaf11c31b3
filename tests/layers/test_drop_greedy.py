"""drop-layers --count K --rescore N: greedy picks re-scored with the earlier picks dropped.

The model is built so that one-shot ranking is wrong for K = 2: block 0 writes into
channels the input leaves at zero and block 1 erases exactly those channels, so dropping
block 0 alone changes nothing (block 1 then sees zeros), dropping block 1 alone changes a
lot, and dropping both changes nothing. Blocks 2 and 3 perturb the output a little each.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from edgeopt.blocks.scoring import compare
from edgeopt.core.errors import PassOptionError
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.layers.drop import DropConfig, DropResult, drop_layers
from edgeopt.testing.residual_models import residual_mlp

WIDTH, HALF = 16, 8


def _pair_model() -> ir.Model:
    model = ir.serde.deserialize_model(residual_mlp(4, width=WIDTH))
    rng = np.random.default_rng(1)
    a0 = np.zeros((WIDTH, WIDTH), np.float32)
    a0[:HALF, :HALF] = rng.uniform(0.1, 1.0, (HALF, HALF))
    b0 = np.zeros((WIDTH, WIDTH), np.float32)
    b0[:HALF, HALF:] = rng.uniform(0.1, 1.0, (HALF, HALF))  # block 0: >= 0 into channels 8..15
    a1 = np.zeros((WIDTH, WIDTH), np.float32)
    a1[HALF:, HALF:] = np.eye(HALF)
    b1 = -a1  # block 1: x[8:] -> x[8:] - relu(x[8:]) = 0 (x[8:] >= 0)
    weights = {"A0": a0, "B0": b0, "A1": a1, "B1": b1}
    for i in (2, 3):  # small perturbations of the first channels
        weights[f"B{i}"] = np.zeros((WIDTH, WIDTH), np.float32)
        weights[f"B{i}"][:, :HALF] = 0.05 * rng.standard_normal((WIDTH, HALF))
    for name, array in weights.items():
        model.graph.initializers[name].const_value = ir.tensor(array, name=name)
    return model


def _data(batches: int = 3, seed: int = 0) -> list[Feeds]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        x = np.zeros((16, WIDTH), np.float32)
        x[:, :HALF] = rng.uniform(0.5, 1.5, (16, HALF))
        out.append({"x": x})
    return out


@pytest.fixture(scope="module")
def one_shot() -> tuple[ir.Model, list[Feeds], DropResult]:
    model, data = _pair_model(), _data()
    return model, data, drop_layers(model, lambda: iter(data), DropConfig(count=2))


def test_one_shot_misses_the_pair_that_greedy_finds(one_shot: tuple[ir.Model, list[Feeds], DropResult]) -> None:
    model, data, result = one_shot
    ranking = [s.name for s in result.scores]
    assert ranking[0] == "layer0" and ranking[-1] == "layer1"
    assert result.scores[0].impact < 1e-9 and result.scores[-1].impact > 0.05
    assert set(result.dropped) == {"layer0", ranking[1]} and result.score < 1 - 1e-4

    progress: list[int] = []
    greedy = drop_layers(model, lambda: iter(data), DropConfig(count=2, rescore=3),
                         scores=result.scores, on_block=progress.append)
    assert greedy.dropped == ("layer0", "layer1")
    assert [s.name for s in greedy.greedy] == ["layer0", "layer1"]
    assert greedy.greedy[1].output_cosine > 1 - 1e-6 and greedy.score > 1 - 1e-6
    assert progress == [5, 6, 7]  # 4 blocks were already scored; 3 re-scored for the second pick
    held_out = _data(1, seed=5)[0]
    np.testing.assert_allclose(run_model(greedy.model, held_out)["logits"], run_model(model, held_out)["logits"],
                               rtol=1e-5, atol=1e-5)
    assert compare(model, greedy.model, lambda: iter([held_out]))[0] > compare(
        model, result.model, lambda: iter([held_out]))[0]


def test_rescore_width_bounds_the_evaluations(one_shot: tuple[ir.Model, list[Feeds], DropResult]) -> None:
    model, data, result = one_shot
    progress: list[int] = []
    narrow = drop_layers(model, lambda: iter(data), DropConfig(count=3, rescore=1),
                         scores=result.scores, on_block=progress.append)
    assert progress == [5, 6]  # one evaluation per pick after the first
    assert narrow.dropped == ("layer0", "layer2", "layer3")  # layer1 never re-scored: it was ranked last


def test_rescore_needs_count() -> None:
    data = _data(1)
    with pytest.raises(PassOptionError, match="--rescore 2 needs --count K"):
        drop_layers(_pair_model(), lambda: iter(data), DropConfig(max_drop=0.1, rescore=2))
    with pytest.raises(PassOptionError, match="--rescore -1"):
        drop_layers(_pair_model(), lambda: iter(data), DropConfig(count=2, rescore=-1))


def test_the_pass_takes_rescore_too(one_shot: tuple[ir.Model, list[Feeds], DropResult]) -> None:
    from edgeopt.passes import DropLayersPass
    from edgeopt.passes.drop_layers import DROPPED_KEY

    model, data, _ = one_shot
    greedy, plain = model.clone(), model.clone()
    assert DropLayersPass(count=2, rescore=3, calibration=data)(greedy).modified
    assert greedy.metadata_props[DROPPED_KEY] == "layer:count=2 rescore=3 -> layer0,layer1"
    DropLayersPass(count=2, calibration=data)(plain)
    assert "layer1" not in plain.metadata_props[DROPPED_KEY]
    assert not DropLayersPass(count=2, rescore=3, calibration=data)(greedy).modified  # idempotent
    with pytest.raises(PassOptionError, match="rescore 2 needs count"):
        DropLayersPass(blocks=("layer0",), rescore=2)
