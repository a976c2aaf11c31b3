"""A real text-line recognizer for the benchmarks: PP-OCRv4's mobile recognizer, shipped in a wheel.

    pip install "rapidocr-onnxruntime==1.4.4"

``rapidocr-onnxruntime`` (Apache-2.0) carries ``models/ch_PP-OCRv4_rec_infer.onnx`` (10.9 MB fp32,
opset 12, as paddle2onnx wrote it: 420 Constant nodes): a PP-LCNet CNN, then an SVTR neck (two small
transformer blocks), then a CTC head over 6,625 characters (Chinese and Latin script, digits,
punctuation), the list stored in the model's ``character`` metadata. Input ``x`` float32
NCHW [batch, 3, 48, width], (pixel / 255 - 0.5) / 0.5; output [batch, width / 8, 6625] softmax.

Labelled data is made here: English text lines (words, numbers, punctuation) rendered in the
fonts that pip packages ship (matplotlib's DejaVu/STIX/Computer Modern, Pillow's default font),
at varied sizes, weights, offsets and contrast, with a little blur and noise; every line is
padded to ``WIDTH`` pixels (rapidocr's default 3x48x320), so batches have one shape. The task
metric is the character error rate (Levenshtein distance / reference length) of greedy CTC
decoding, as rapidocr decodes.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PIP = 'pip install "rapidocr-onnxruntime==1.4.4"'
HEIGHT, WIDTH = 48, 320
INPUT = "x"
DESCRIPTION = ("PP-OCRv4 mobile text-line recognizer (rapidocr-onnxruntime 1.4.4: PP-LCNet CNN + SVTR "
               "transformer neck + CTC over 6,625 characters), opset 12; input float32 [batch,3,48,320]")

_WORDS = (
    "invoice total amount due date order number street avenue road city station platform exit "
    "open closed monday friday price sale offer free parking entrance floor room office bank "
    "coffee bread milk water ticket train bus airport gate terminal hotel reception account "
    "customer service phone email address payment card receipt tax discount weight height "
    "north south east west central park market square bridge river lane drive court hall"
).split()
_FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
               "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "cmr10.ttf", "cmss10.ttf")


class MissingModelPackage(RuntimeError):
    """The package that carries the recognizer is not installed."""


def recognizer_onnx() -> Path:
    """The recognizer inside the installed wheel (read it; never write there)."""
    if importlib.util.find_spec("rapidocr_onnxruntime") is None:
        raise MissingModelPackage(f"the PP-OCRv4 recognizer needs rapidocr-onnxruntime. Install it with: {PIP}")
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "models" / "ch_PP-OCRv4_rec_infer.onnx"
    if not path.is_file():
        raise MissingModelPackage(f"{path} is missing; reinstall with: {PIP}")
    return path


def characters(path: Path) -> list[str]:
    """The CTC alphabet: blank, the model's ``character`` metadata, then space (as rapidocr builds it)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return ["blank", *meta["character"].splitlines(), " "]


def text_lines(n: int, seed: int) -> list[str]:
    """``n`` deterministic short text lines (2-4 words, numbers, punctuation) that fit 320x48."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        words = [str(rng.choice(_WORDS)) for _ in range(int(rng.integers(1, 4)))]
        words = [w.capitalize() if rng.random() < 0.4 else w.upper() if rng.random() < 0.1 else w for w in words]
        kind = rng.random()
        if kind < 0.35:
            words.insert(int(rng.integers(0, len(words) + 1)), str(int(rng.integers(1, 9999))))
        elif kind < 0.55:
            words.append(f"{rng.integers(0, 999)}.{rng.integers(0, 99):02d}")
        elif kind < 0.65:
            words.append(f"{rng.integers(1, 28):02d}/{rng.integers(1, 12):02d}/20{rng.integers(10, 30)}")
        line = " ".join(words)
        if rng.random() < 0.3:
            line += str(rng.choice([".", ",", ":", "!", "?", ";"]))
        lines.append(line[:22])
    return lines


def _fonts() -> list[str]:
    spec = importlib.util.find_spec("matplotlib")
    folder = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" if spec and spec.origin else None
    return [str(folder / f) for f in _FONT_NAMES if folder is not None and (folder / f).is_file()]


def render(lines: list[str], seed: int) -> np.ndarray:
    """The lines as the recognizer's input, float32 [n, 3, 48, 320] (rapidocr's resize and padding)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed + 7919)
    fonts = _fonts()
    out = np.zeros((len(lines), 3, HEIGHT, WIDTH), dtype=np.float32)
    for i, text in enumerate(lines):
        size = int(rng.integers(26, 38))
        font = ImageFont.truetype(fonts[i % len(fonts)], size) if fonts else ImageFont.load_default(size=size)
        left, top, right, bottom = (int(v) for v in font.getbbox(text))
        pad_x, pad_y = int(rng.integers(2, 12)), int(rng.integers(3, 10))
        background, ink = int(rng.integers(170, 256)), int(rng.integers(0, 90))
        image = Image.new("L", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), background)
        ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, fill=ink, font=font)
        if rng.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
        width = min(WIDTH, int(np.ceil(HEIGHT * image.width / image.height)))
        pixels = np.asarray(image.resize((width, HEIGHT), Image.Resampling.BILINEAR), dtype=np.float32)
        pixels = np.clip(pixels + rng.normal(0, 4.0, pixels.shape), 0, 255)
        out[i, :, :, :width] = (pixels / 255.0 - 0.5) / 0.5
    return out


def batches(n: int, seed: int, batch: int = 10) -> Iterator[tuple[list[str], np.ndarray]]:
    """``n`` labelled lines in batches: (texts, input [batch, 3, 48, 320])."""
    texts = text_lines(n, seed)
    for start in range(0, n, batch):
        chunk = texts[start:start + batch]
        yield chunk, render(chunk, seed * 100_003 + start)


def decode(probs: np.ndarray, alphabet: list[str]) -> list[str]:
    """Greedy CTC decoding of [batch, time, classes]: argmax, merge repeats, drop blanks."""
    out = []
    for idx in probs.argmax(-1):
        keep = np.ones(len(idx), dtype=bool)
        keep[1:] = idx[1:] != idx[:-1]
        out.append("".join(alphabet[k] for k in idx[keep & (idx != 0)]))
    return out


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def character_error_rate(predicted: list[str], truth: list[str]) -> float:
    """Total edit distance over total reference length."""
    return sum(_edit_distance(p, t) for p, t in zip(predicted, truth, strict=True)) / sum(len(t) for t in truth)


if __name__ == "__main__":  # smoke run: fp32 CER on 200 rendered lines
    import onnxruntime as ort

    path = recognizer_onnx()
    alphabet = characters(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got, want = [], []
    for texts, x in batches(200, seed=1):
        got += decode(session.run(None, {INPUT: x})[0], alphabet)
        want += texts
    print(f"CER {character_error_rate(got, want):.4f}; e.g. {list(zip(want[:5], got[:5], strict=True))}")
    importlib.import_module("PIL.Image").fromarray(
        np.uint8((render(want[:8], 1)[:, 0].reshape(-1, WIDTH) * 0.5 + 0.5) * 255)).save("/tmp/ocr_lines.png")
