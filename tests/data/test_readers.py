"""Tests for edgeopt.data.readers and edgeopt.data.images: readers, checks, batching."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest
from PIL import Image

from edgeopt.core.errors import CalibrationDataError
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import Feeds, run_model
from edgeopt.data.images import load_image
from edgeopt.data.readers import (
    CallableReader,
    ImageFolderReader,
    ImagePreprocess,
    NpzDirReader,
    RandomReader,
    TorchLoaderReader,
    batches,
    check_feeds,
    default_preprocess,
    open_reader,
)


def parse(text: str) -> ir.Model:
    return load_model(onnx.parser.parse_model(text))


HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
# The demo's input signature: grey 8x8 images with a symbolic batch.
GREY = parse(f"{HEADER} g (float[batch,1,8,8] image) => (float[batch,1,8,8] out) {{ out = Add(image, image) }}")
# Two inputs, a symbolic batch and one static dim each.
PAIR = parse(f"""{HEADER} p (float[N,4] x, int64[N,2] idx) => (float[N,4] y, int64[N,2] z)
{{ y = Relu(x)
   z = Identity(idx) }}""")
RGB_NHWC = parse(f"{HEADER} r (float[1,6,6,3] pixels) => (float[1,6,6,3] out) {{ out = Identity(pixels) }}")
FIXED = parse(f"{HEADER} f (float[2,4] x) => (float[2,4] y) {{ y = Relu(x) }}")
VECTOR = parse(f"{HEADER} v (float[N,4] x) => (float[N,4] y) {{ y = Relu(x) }}")


def rows(n: int, start: int = 0) -> np.ndarray:
    """``n`` distinct float32 samples of shape (4,): row i is [i, i, i, i] (+ start)."""
    return np.repeat(np.arange(start, start + n, dtype=np.float32)[:, None], 4, axis=1)


def pair_feed(n: int, start: int = 0) -> Feeds:
    return {"x": rows(n, start), "idx": np.arange(start, start + n, dtype=np.int64)[:, None].repeat(2, axis=1)}


def write_png(path: Path, pixels: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def pixels(height: int, width: int, seed: int = 0, channels: int | None = 3) -> np.ndarray:
    shape = (height, width) if channels is None else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# check_feeds ------------------------------------------------------------------------------------


def test_check_feeds_accepts_matching_feeds_and_any_symbolic_size() -> None:
    check_feeds(GREY, {"image": np.zeros((5, 1, 8, 8), np.float32)})
    check_feeds(PAIR, pair_feed(3))


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        (
            {"image": np.zeros((32, 8, 8))},
            r"^calibration data: input 'image' expects float32\[batch,1,8,8\], got float64\[32,8,8\] "
            r"\(dtype float64, rank 3\)\. Reshape/cast the data to match the model\.$",
        ),
        (
            {"image": np.zeros((2, 3, 8, 8), np.float32)},
            r"input 'image' expects float32\[batch,1,8,8\], got float32\[2,3,8,8\] \(dim 1 is 3, expected 1\)",
        ),
        (
            {"imag": np.zeros((1, 1, 8, 8), np.float32)},
            r"^calibration data: unexpected input 'imag' \(did you mean 'image'\?\); the model's inputs are 'image'\.",
        ),
        ({"image": [[0.0]]}, r"input 'image' expects float32\[batch,1,8,8\], got list\. Convert it to a numpy array"),
        ([np.zeros((1, 1, 8, 8))], r"each item must map input names to arrays, got list"),
    ],
)
def test_check_feeds_errors_name_input_expected_and_got(feeds: Any, message: str) -> None:
    with pytest.raises(CalibrationDataError, match=message):
        check_feeds(GREY, feeds)


def test_check_feeds_missing_input_lists_what_came() -> None:
    with pytest.raises(
        CalibrationDataError,
        match=r"^loader: no data for input 'idx' \(int64\[N,2\]\); got 'x'\. Provide an array for every model input",
    ):
        check_feeds(PAIR, {"x": rows(2)}, source="loader")


# batches ----------------------------------------------------------------------------------------


def files_of_three(tmp_path: Path, total: int = 10) -> NpzDirReader:
    """``total`` samples of PAIR in .npz files of 3 (the last one smaller)."""
    for i, start in enumerate(range(0, total, 3)):
        feed = pair_feed(min(3, total - start), start)
        np.savez(tmp_path / f"part{i:02d}.npz", x=feed["x"], idx=feed["idx"], label=np.zeros(1))
    return NpzDirReader(tmp_path, input_names=["x", "idx"])


def test_batches_rebatches_across_files_exactly(tmp_path: Path) -> None:
    reader = files_of_three(tmp_path)
    out = list(batches(reader, PAIR, batch_size=4))
    assert [b["x"].shape[0] for b in out] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in out]), rows(10))
    np.testing.assert_array_equal(np.concatenate([b["idx"] for b in out]), pair_feed(10)["idx"])
    result = run_model(PAIR, out[0])  # the feeds fit the model in ONNX Runtime
    np.testing.assert_array_equal(result["y"], rows(4))


def test_batches_limit_is_exact(tmp_path: Path) -> None:
    reader = files_of_three(tmp_path)
    out = list(batches(reader, PAIR, batch_size=4, limit=7))
    assert [b["x"].shape[0] for b in out] == [4, 3]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in out]), rows(7))
    unbatched = list(batches(reader, PAIR, limit=7))
    assert [b["x"].shape[0] for b in unbatched] == [3, 3, 1]
    np.testing.assert_array_equal(unbatched[2]["idx"], pair_feed(1, 6)["idx"])


def test_batches_splits_a_big_item_and_keeps_plain_feeds() -> None:
    out = list(batches([pair_feed(9)], PAIR, batch_size=2))
    assert [b["x"].shape[0] for b in out] == [2, 2, 2, 2, 1]
    np.testing.assert_array_equal(out[3]["x"], rows(2, 6))
    same = list(batches([pair_feed(2), pair_feed(3)], PAIR))
    assert [b["x"].shape[0] for b in same] == [2, 3]


def test_batches_stops_reading_at_the_limit() -> None:
    def samples() -> Iterator[Feeds]:
        for i in range(5):
            yield {"x": rows(1, i)}
        raise AssertionError("read past the limit")

    out = list(batches(CallableReader(samples), VECTOR, batch_size=2, limit=5))
    assert [b["x"].shape[0] for b in out] == [2, 2, 1]


def test_batches_over_1000_files_opens_only_what_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(1000):
        np.save(tmp_path / f"{i:04d}.npy", rows(1, i))
    reader = NpzDirReader(tmp_path, input_names=["x"])
    opened: list[str] = []
    real_load = np.load

    def counting_load(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(Path(file).name)
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    out = list(batches(reader, VECTOR, batch_size=4, limit=6))
    assert opened == ["0000.npy", "0001.npy", "0002.npy", "0003.npy", "0004.npy", "0005.npy"]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in out]), rows(6))
    opened.clear()
    assert next(iter(reader))["x"].tolist() == [[0.0] * 4] and opened == ["0000.npy"]


def test_batches_fixed_batch_dim(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(CalibrationDataError, match=r"batch_size 3 does not fit input 'x', whose batch dim is fixed to"):
        batches([{"x": rows(3)}], FIXED, batch_size=3)
    with caplog.at_level(logging.WARNING, logger="edgeopt.data.readers"):
        out = list(batches([{"x": rows(1)}, {"x": rows(4, 1)}], FIXED, batch_size=2))
    assert [b["x"].tolist() for b in out] == [rows(2).tolist(), rows(2, 2).tolist()]
    assert "dropped the last 1 sample(s)" in caplog.text
    with pytest.raises(CalibrationDataError, match=r"dim 0 is 1, expected 2"):
        list(batches([{"x": rows(1)}], FIXED))


@pytest.mark.parametrize(
    ("reader", "kwargs", "message"),
    [
        ([pair_feed(1)], {"batch_size": 0}, r"^calibration data: batch_size must be a positive integer, got 0\."),
        ([pair_feed(1)], {"limit": -1}, r"limit must be a positive integer, got -1"),
        ([], {}, r"^calibration data: the reader yielded nothing\."),
        (
            [pair_feed(2), {"x": rows(1), "idx": np.zeros((1, 3), np.int64)}],
            {},
            r"^calibration data item 1: input 'idx' expects int64\[N,2\], got int64\[1,3\] \(dim 1 is 3, expected 2\)",
        ),
        (
            [{"x": rows(2), "idx": np.zeros((3, 2), np.int64)}],
            {"limit": 1},
            r"inputs disagree on the number of samples along axis 0 \(x: 2, idx: 3\)",
        ),
    ],
)
def test_batches_errors(reader: list[Feeds], kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(CalibrationDataError, match=message):
        list(batches(reader, PAIR, **kwargs))


# NpzDirReader -----------------------------------------------------------------------------------


def test_npz_reader_yields_files_in_sorted_order_and_starts_over(tmp_path: Path) -> None:
    np.savez(tmp_path / "b.npz", x=rows(1, 1), idx=np.ones((1, 2), np.int64))
    np.savez(tmp_path / "a.npz", x=rows(2), idx=np.zeros((2, 2), np.int64))
    (tmp_path / "notes.txt").write_text("ignored")
    reader = NpzDirReader(tmp_path)
    first, second = list(reader), list(reader)
    assert len(reader) == 2 and [sorted(f) for f in first] == [["idx", "x"]] * 2
    np.testing.assert_array_equal(first[0]["x"], rows(2))
    np.testing.assert_array_equal(first[1]["idx"], np.ones((1, 2), np.int64))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])


def test_npz_reader_single_file_npy_and_unnamed_array(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", rows(3))
    np.savez(tmp_path / "two.npz", rows(2, 3))  # stored as arr_0
    reader = NpzDirReader(tmp_path, input_names=["x"])
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in reader]), rows(5))
    single = list(NpzDirReader(tmp_path / "one.npy", input_names=["x"]))
    assert len(single) == 1
    np.testing.assert_array_equal(run_model(VECTOR, single[0])["y"], rows(3))


def test_npz_reader_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CalibrationDataError, match=rf"^{missing}: calibration data not found\. Check the path\.$"):
        NpzDirReader(missing)
    with pytest.raises(CalibrationDataError, match=rf"^{tmp_path}: no \.npy/\.npz files in this folder\. Save each"):
        NpzDirReader(tmp_path)
    np.save(tmp_path / "a.npy", rows(1))
    with pytest.raises(CalibrationDataError, match=rf"{tmp_path / 'a.npy'}: a \.npy file holds one unnamed array.*"
                       r"\(got None\)\. Pass input_names="):
        NpzDirReader(tmp_path)
    np.savez(tmp_path / "b.npz", y=rows(1))
    with pytest.raises(CalibrationDataError, match=rf"{tmp_path / 'b.npz'}: no array named 'x' \(it holds 'y'\)"):
        list(NpzDirReader(tmp_path / "b.npz", input_names=["x", "idx"]))
    np.save(tmp_path / "d.npy", rows(1))
    (tmp_path / "d.npy").rename(tmp_path / "d.npz")  # .npy content under a .npz name
    with pytest.raises(CalibrationDataError, match=r"d\.npz: a \.npy file holds one unnamed array"):
        list(NpzDirReader(tmp_path / "d.npz"))
    (tmp_path / "c.npz").write_bytes(b"not a zip file")
    with pytest.raises(CalibrationDataError, match=rf"^{tmp_path / 'c.npz'}: cannot read calibration file \(.*\)\. "
                       "Re-save it with numpy.savez or numpy.save"):
        list(NpzDirReader(tmp_path / "c.npz"))


# Callable, torch, random ----------------------------------------------------------------------


def test_callable_reader_makes_generators_reiterable() -> None:
    def generate() -> Iterator[Feeds]:
        yield from (pair_feed(1, i) for i in range(3))

    reader = CallableReader(generate)
    assert [f["x"][0, 0] for f in reader] == [0, 1, 2]
    assert [f["x"][0, 0] for f in reader] == [0, 1, 2]


def test_torch_loader_reader_takes_inputs_from_labelled_batches() -> None:
    torch = pytest.importorskip("torch")
    x = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.arange(6)), batch_size=4)
    reader = TorchLoaderReader(loader, input_names=["x"])
    out = list(reader)
    assert [set(f) for f in out] == [{"x"}, {"x"}] and out[0]["x"].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in out]), x.numpy())
    assert len(list(reader)) == 2  # starts over
    np.testing.assert_array_equal(run_model(VECTOR, out[1])["y"], x.numpy()[4:])
    as_dicts = TorchLoaderReader([{"idx": torch.zeros(1, 2, dtype=torch.int64), "x": x[:1]}], input_names=["x", "idx"])
    assert list(next(iter(as_dicts))) == ["x", "idx"]
    assert next(iter(TorchLoaderReader([x[:2]], input_names=["x"])))["x"].shape == (2, 4)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([(np.zeros(1),)], r"batch 0 holds 1 element\(s\) for inputs 'x', 'idx'\. Make the loader yield the inputs"),
        ([{"x": 1}], r"batch 0 holds keys 'x' for inputs 'x', 'idx'"),
        ([np.zeros(1)], r"batch 0 holds a single ndarray for inputs 'x', 'idx'"),
    ],
)
def test_torch_loader_reader_errors(items: list[Any], message: str) -> None:
    with pytest.raises(CalibrationDataError, match=rf"^TorchLoaderReader: {message}"):
        list(TorchLoaderReader(items, input_names=["x", "idx"]))


def test_random_reader_is_seeded_shaped_and_reiterable() -> None:
    reader = RandomReader(PAIR, count=3, batch_size=5, seed=7)
    first, second = list(reader), list(reader)
    assert len(reader) == 3 and len(first) == 3
    assert first[0]["x"].shape == (5, 4) and first[0]["idx"].shape == (5, 2) and first[0]["idx"].dtype == np.int64
    np.testing.assert_array_equal(first[2]["x"], second[2]["x"])
    assert not np.array_equal(first[0]["x"], first[1]["x"])
    np.testing.assert_array_equal(run_model(PAIR, first[0])["z"], first[0]["idx"])
    with pytest.raises(CalibrationDataError, match=r"RandomReader: count must be a positive integer, got 0"):
        RandomReader(PAIR, count=0)


# Images -----------------------------------------------------------------------------------------


def test_image_reader_normalizes_nchw_exactly(tmp_path: Path) -> None:
    images = [write_png(tmp_path / f"{i}.png", pixels(5, 7, seed=i)) for i in range(3)]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    reader = ImageFolderReader(tmp_path, input_name="x", preprocess=ImagePreprocess(mean=mean, std=std), batch_size=2)
    out = list(reader)
    assert len(reader) == 2 and [f["x"].shape for f in out] == [(2, 3, 5, 7), (1, 3, 5, 7)]
    expected = (np.stack(images).astype(np.float64) / 255 - mean) / std
    # float32 arithmetic: atol covers the cancellation where pixel/255 is close to the mean.
    got = np.concatenate([f["x"] for f in out])
    np.testing.assert_allclose(got, expected.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-6)
    assert out[0]["x"].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in reader]), got)  # starts over


def test_image_reader_nhwc_recursive_and_runs_in_the_model(tmp_path: Path) -> None:
    a = write_png(tmp_path / "b" / "a.png", pixels(6, 6, seed=1))
    b = write_png(tmp_path / "a.png", pixels(6, 6, seed=2))
    reader = ImageFolderReader(tmp_path, input_name="pixels", preprocess=ImagePreprocess(layout="NHWC"))
    out = list(reader)
    np.testing.assert_allclose(out[0]["pixels"][0], b / np.float32(255), rtol=1e-6)  # a.png sorts before b/a.png
    np.testing.assert_allclose(out[1]["pixels"][0], a / np.float32(255), rtol=1e-6)
    np.testing.assert_allclose(run_model(RGB_NHWC, out[1])["out"], out[1]["pixels"])


def test_image_resize_and_center_crop(tmp_path: Path) -> None:
    grey = write_png(tmp_path / "g.png", pixels(4, 6, channels=None))
    up = ImagePreprocess(resize=(8, 12), resample="nearest", scale=1.0, grayscale=True, dtype="uint8")
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", up)[0], grey.repeat(2, 0).repeat(2, 1))
    down = ImagePreprocess(resize=2, resample="nearest", scale=1.0, grayscale=True)  # shorter side 4 -> 2
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", down)[0], grey[1::2, 1::2])
    crop = ImagePreprocess(center_crop=(2, 2), scale=1.0, grayscale=True)
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", crop)[0], grey[1:3, 2:4])
    rgb = write_png(tmp_path / "c.png", pixels(6, 12))
    both = ImagePreprocess(resize=3, center_crop=(2, 4), resample="nearest", scale=1.0, layout="NHWC")
    np.testing.assert_array_equal(load_image(tmp_path / "c.png", both), rgb[1::2, 1::2][0:2, 1:5])
    smooth = ImagePreprocess(resize=(3, 5))  # bilinear keeps a constant image constant
    write_png(tmp_path / "flat.png", np.full((7, 9, 3), 51, np.uint8))
    np.testing.assert_allclose(load_image(tmp_path / "flat.png", smooth), np.full((3, 3, 5), 0.2), rtol=1e-6)


def test_image_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match=rf"^{tmp_path}: no \.bmp/.*files in this folder or below"):
        ImageFolderReader(tmp_path, input_name="x", preprocess=ImagePreprocess())
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationDataError, match=rf"^{tmp_path / 'bad.png'}: cannot read image \(.*\)\. Re-save"):
        list(ImageFolderReader(tmp_path, input_name="x", preprocess=ImagePreprocess()))
    (tmp_path / "bad.png").unlink()
    write_png(tmp_path / "a.png", pixels(4, 4))
    write_png(tmp_path / "b.png", pixels(5, 4))
    with pytest.raises(CalibrationDataError, match=rf"^{tmp_path / 'b.png'}: preprocessed to shape \[3, 5, 4\], but "
                       r".*a\.png gives \[3, 4, 4\]\. Set resize and center_crop"):
        list(ImageFolderReader(tmp_path, input_name="x", preprocess=ImagePreprocess(), batch_size=2))
    too_small = r"a\.png: image is 4x4 after resizing, smaller than center_crop 5x5\. Resize to at least the crop size"
    with pytest.raises(CalibrationDataError, match=too_small):
        load_image(tmp_path / "a.png", ImagePreprocess(center_crop=(5, 5)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean": (0.5, 0.4)}, r"mean has 2 values for 3 channel\(s\) \(grayscale=False\); give 3 value\(s\) or one"),
        ({"std": (1.0, 0.0, 1.0)}, r"std \(1\.0, 0\.0, 1\.0\) contains 0"),
        ({"layout": "CHW"}, r"layout must be 'NCHW' or 'NHWC', got 'CHW'"),
        ({"resize": 0}, r"resize and center_crop take positive integers"),
        ({"dtype": "floaty"}, r"dtype 'floaty' is not a numpy dtype name"),
    ],
)
def test_image_preprocess_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CalibrationDataError, match=rf"^ImagePreprocess: {message}.*\. Fix the preprocessing settings"):
        ImagePreprocess(**kwargs)


def test_default_preprocess_follows_the_model() -> None:
    assert default_preprocess(GREY) == ImagePreprocess(resize=(8, 8), grayscale=True)
    assert default_preprocess(RGB_NHWC) == ImagePreprocess(resize=(6, 6), layout="NHWC")
    uint8 = parse(f"{HEADER} u (uint8[N,3,H,W] x) => (uint8[N,3,H,W] y) {{ y = Identity(x) }}")
    assert default_preprocess(uint8) == ImagePreprocess(scale=1.0, dtype="uint8")
    with pytest.raises(CalibrationDataError, match=r"needs one 4-D input with 1 or 3 channels, the model has 'x' "
                       r"FLOAT\[N,4\]\. Pass an explicit ImagePreprocess"):
        default_preprocess(VECTOR)


# open_reader ------------------------------------------------------------------------------------


def test_open_reader_dispatch(tmp_path: Path) -> None:
    random = open_reader("random:4", PAIR)
    assert isinstance(random, RandomReader) and random.count == 4
    (tmp_path / "arrays").mkdir()
    np.save(tmp_path / "arrays" / "s.npy", rows(2))
    arrays = open_reader(tmp_path / "arrays", VECTOR)
    assert isinstance(arrays, NpzDirReader)
    np.testing.assert_array_equal(next(iter(arrays))["x"], rows(2))
    digit = write_png(tmp_path / "images" / "sub" / "d.png", pixels(16, 16, channels=None))
    images = open_reader(tmp_path / "images", GREY)
    assert isinstance(images, ImageFolderReader) and images.preprocess == ImagePreprocess(resize=(8, 8), grayscale=True)
    (feed,) = list(batches(images, GREY))
    assert feed["image"].shape == (1, 1, 8, 8)
    expected = np.asarray(Image.fromarray(digit).resize((8, 8), Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(run_model(GREY, feed)["out"][0, 0], 2 * expected, rtol=1e-6)
    custom = ImagePreprocess(resize=(8, 8), grayscale=True, scale=1.0)
    one_image = open_reader(tmp_path / "images" / "sub" / "d.png", GREY, preprocess=custom)
    assert isinstance(one_image, ImageFolderReader) and one_image.preprocess == custom


def test_open_reader_errors(tmp_path: Path) -> None:
    accepted = r"Accepted: a folder \(or file\) of \.npz/\.npy arrays, a folder of images .*, or random:N\.$"
    with pytest.raises(CalibrationDataError, match=r"^calibration data 'random:x': expected random:N with N >= 1"):
        open_reader("random:x", PAIR)
    with pytest.raises(CalibrationDataError, match=rf"^{tmp_path / 'none'}: calibration data not found\. {accepted}"):
        open_reader(tmp_path / "none", PAIR)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CalibrationDataError, match=rf"^{tmp_path}: no calibration data here\. {accepted}"):
        open_reader(tmp_path, PAIR)
    write_png(tmp_path / "a.png", pixels(4, 4))
    single = r"images can feed only a single-input model; this one has 'x', 'idx'\. Save \.npz files keyed by"
    with pytest.raises(CalibrationDataError, match=single):
        open_reader(tmp_path, PAIR)
    np.savez(tmp_path / "a.npz", x=rows(1))
    with pytest.raises(CalibrationDataError, match=r"holds both \.npz/\.npy files and images\. Put them in separate"):
        open_reader(tmp_path, VECTOR)
