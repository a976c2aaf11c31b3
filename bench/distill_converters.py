"""ONNX -> trainable torch for distillation: edgeopt's own interpreter vs onnx2torch 1.5.15.

For each model: does it convert, the largest difference from ONNX Runtime on random
inputs, the share of float weights that train (parameters, not buffers), and the time.
onnx2torch is read from ``--onnx2torch DIR`` (``pip install --no-deps --target DIR
onnx2torch==1.5.15``); it imports torchvision, whose C++ extension fails with the CPU
torch, so a stub stands in for it. Writes bench/results/distill_converters.md.

    python bench/distill_converters.py --onnx2torch /tmp/o2t [--pretrained]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

from edgeopt.core.runtime import random_feeds, run_model
from edgeopt.testing import prune_models
from edgeopt.training.interpreter import OnnxModule

ROOT = Path(__file__).resolve().parents[1]


def _cases(tmp: Path, pretrained: bool) -> dict[str, Path]:
    cases = {"digits CNN": ROOT / "edgeopt" / "assets" / "digits_cnn.onnx"}
    _edgeopt("prune", str(cases["digits CNN"]), "-o", str(tmp / "pruned.onnx"), "--ratio", "0.5", "--no-repair")
    cases["digits CNN pruned 0.5"] = tmp / "pruned.onnx"
    _edgeopt("quantize", str(cases["digits CNN"]), "-o", str(tmp / "qdq.onnx"), "--calib", "random:16")
    cases["digits CNN QDQ int8"] = tmp / "qdq.onnx"
    for name, model in (("attention block", prune_models.attention()),
                        ("transformer block", prune_models.transformer_block())):
        ir.save(model, tmp / f"{name}.onnx")
        cases[name] = tmp / f"{name}.onnx"
    if pretrained:
        sys.path.insert(0, str(ROOT / "bench"))
        import pretrained as zoo

        cache = ROOT / "bench" / "results" / "quantize-cache"
        path, _ = zoo.pretrained_cnn_onnx(cache)
        cases["EfficientNet-Lite0"] = path
        _edgeopt("prune", str(path), "-o", str(tmp / "eff_pruned.onnx"), "--ratio", "0.3", "--no-repair")
        cases["EfficientNet-Lite0 pruned 0.3"] = tmp / "eff_pruned.onnx"
        try:
            cases["MiniLM-L6"] = zoo.minilm_onnx(cache, seq_len=32)[0]
        except Exception as e:  # noqa: BLE001 - transformers may not import next to a broken torchvision
            print(f"MiniLM skipped: {type(e).__name__}: {e}", file=sys.stderr)
    return cases


def _edgeopt(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).with_name("edgeopt")), *args], check=True, capture_output=True)


def _feeds(model: ir.Model) -> dict[str, np.ndarray]:
    dims = {v.shape[0]: 2 for v in model.graph.inputs if v.shape is not None and not isinstance(v.shape[0], int)}
    feeds = random_feeds(model, seed=0, dims={str(k): v for k, v in dims.items()})
    return {k: (np.ones_like(v) if "mask" in k else v) for k, v in feeds.items()}


def _ours(path: Path, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
    module = OnnxModule(ir.load(path))
    outputs = module.run({k: torch.from_numpy(v) for k, v in feeds.items()})
    floats = sum(p.numel() for p in module.parameters())
    return [o.detach().numpy() for o in outputs.values()], floats


def _onnx2torch(path: Path, feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
    from onnx2torch import convert

    module = convert(onnx.load(path))
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    outs = out if isinstance(out, tuple | list) else [out]
    return [o.numpy() for o in outs], sum(p.numel() for p in module.parameters())


def _row(name: str, path: Path) -> list[str]:
    model = ir.load(path)
    feeds = _feeds(model)
    ref = list(run_model(model, feeds).values())
    total = sum(v.const_value.size for v in model.graph.initializers.values()
                if v.const_value is not None and v.dtype is not None and v.dtype.is_floating_point())
    cells = [name, str(len(model.graph))]
    for convert in (_ours, _onnx2torch):
        start = time.perf_counter()
        try:
            got, trainable = convert(path, feeds)
            diff = max(float(np.abs(g.astype(np.float64) - r).max()) for g, r in zip(got, ref, strict=True))
            cells += [f"{diff:.1e}", f"{trainable / max(total, 1):.0%}", f"{time.perf_counter() - start:.2f}"]
        except Exception as e:  # noqa: BLE001 - the table reports failures
            cells += [f"fails: {type(e).__name__}: {str(e).splitlines()[0][:110]}", "-", "-"]
    return cells


def _stub_torchvision() -> None:
    """onnx2torch imports torchvision only for its NMS and RoIAlign converters, which no case here uses."""
    import types

    ops = types.ModuleType("torchvision.ops")
    ops.roi_align = ops.nms = ops.box_convert = None  # type: ignore[attr-defined]
    vision = types.ModuleType("torchvision")
    vision.ops = ops  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": vision, "torchvision.ops": ops})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx2torch", type=Path, required=True)
    parser.add_argument("--pretrained", action="store_true", help="also EfficientNet-Lite0 and MiniLM-L6")
    args = parser.parse_args()
    _stub_torchvision()
    sys.path.append(str(args.onnx2torch))
    head = ["model", "nodes", "ours: max diff", "ours: trainable", "ours: s",
            "onnx2torch: max diff", "onnx2torch: trainable", "onnx2torch: s"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_row(name, path) for name, path in _cases(Path(tmp), args.pretrained).items()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(lines)
    print(text)
    (ROOT / "bench" / "results" / "distill_converters.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
