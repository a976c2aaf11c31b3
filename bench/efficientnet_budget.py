"""How much of issue 14's EfficientNet-Lite0 budget (top-1 agreement >= 0.97 on the search bench's
100 crops) each compression takes alone, before any combination is tried.

    python bench/efficientnet_budget.py          # writes bench/results/efficientnet_budget.json

Rows (each scored as the search screens a model: ONNX Runtime, agreement with fp32):
- weights alone fake-quantized per output channel, activations float: int8 everywhere, int4 on the
  classifier (28 % of the weights), int4 on the classifier and every 1x1 conv (96 %), int4 everywhere;
  codes by GPTQ on the layer's input statistics (edgeopt's learned rounding) or round-to-nearest;
- share-weights with data-aware codebooks at 16/32/64 values times a scale per channel (4/5/6 bits);
- input features no calibration crop ever drives (dead ReLU6 channels): what lossless pruning could cut.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_bench  # noqa: E402

from edgeopt.calibration.rounding import WeightLayer, input_hessians, round_layer, weight_layers  # noqa: E402
from edgeopt.core.model_io import load_model, save_model  # noqa: E402
from edgeopt.pipeline import cleanup  # noqa: E402
from edgeopt.search.screen import Screen  # noqa: E402
from edgeopt.search.stages import cluster_weights_file  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "efficientnet_budget.json"


def _fake_quantized(model: ir.Model, layers: list[WeightLayer], hessians: dict[str, np.ndarray], pick: Any,
                    bits: int, learned: bool) -> tuple[ir.Model, float]:
    """A copy of ``model`` whose picked layers hold their weights quantized per channel to ``bits``, dequantized."""
    work = model.clone()
    nodes = {node.name: node for node in work.graph}
    q, chosen = 2 ** (bits - 1) - 1, 0
    for layer in layers:
        if not pick(layer):
            continue
        w, axis = layer.weight, layer.channel_axis
        shape = [1] * w.ndim
        shape[axis] = -1
        scale = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis)) / q
        scale[scale == 0] = 1.0
        codes = (round_layer(layer, scale, hessians[layer.node], qmin=-q, qmax=q) if learned
                 else np.clip(np.round(w / scale.reshape(shape)), -q, q))
        nodes[layer.node].inputs[1].const_value = ir.tensor((codes * scale.reshape(shape)).astype(np.float32))
        chosen += w.size
    return work, chosen / sum(layer.weight.size for layer in layers)


def _dead(hessian: np.ndarray) -> np.ndarray:
    """Input features whose mean square is under 1e-8 of the layer's largest: never driven by the data."""
    power = np.diagonal(hessian, axis1=1, axis2=2).ravel()
    return power <= 1e-8 * max(float(power.max()), 1e-30)


def main() -> None:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_path, calib, val, _ = search_bench._efficientnet(root, 64, 100)
        screen = Screen(model_path, data=val, labels=None, metric="agreement")
        model = load_model(model_path)
        cleanup()(model)
        layers = weight_layers(model)
        hessians = input_hessians(model, layers, calib, samples=64)

        def classifier(layer: WeightLayer) -> bool:
            return layer.kind == "gemm"

        def pointwise(layer: WeightLayer) -> bool:
            return layer.kind == "conv" and layer.groups == 1 and layer.weight.shape[2:] == (1, 1)

        picks = {"all": lambda layer: True, "classifier": classifier,
                 "classifier+1x1": lambda layer: classifier(layer) or pointwise(layer)}
        for name, bits, learned in (("all", 8, True), ("classifier", 4, True), ("classifier", 4, False),
                                    ("classifier+1x1", 4, True), ("classifier+1x1", 4, False), ("all", 4, True)):
            work, share = _fake_quantized(model, layers, hessians, picks[name], bits, learned)
            path = root / f"w{bits}_{name}_{learned}.onnx"
            save_model(work, path)
            rows.append({"weights": f"int{bits} per channel", "layers": name, "weight_share": round(share, 3),
                         "codes": "GPTQ" if learned else "nearest", "agreement": screen.score(path)[1]})
        for clusters in (16, 32, 64):
            path = root / f"k{clusters}.onnx"
            start = time.perf_counter()
            cluster_weights_file(model_path, path, clusters=clusters, channel_scale=True, data_aware=True,
                                 calibration=calib, samples=128)
            rows.append({"share_weights": clusters, "channel_scale": True, "data_aware": True,
                         "size_bytes": path.stat().st_size, "seconds": round(time.perf_counter() - start, 1),
                         "agreement": screen.score(path)[1]})
        dead = {layer.node: _dead(hessians[layer.node]) for layer in layers}
        total = sum(layer.weight.size for layer in layers)
        summary = {"model": "efficientnet-lite0", "budget": "agreement >= 0.97 on 100 crops", "calibration": 64,
                   "original_bytes": model_path.stat().st_size, "rows": rows,
                   "dead_input_features": int(sum(d.sum() for d in dead.values())),
                   "input_features": int(sum(d.size for d in dead.values())),
                   "weights_reading_dead_features": round(sum(layer.weight.size * float(dead[layer.node].mean())
                                                              for layer in layers) / total, 4)}
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
