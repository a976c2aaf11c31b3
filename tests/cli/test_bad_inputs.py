"""Every verb answers every bad input (edgeopt.testing.bad_models) with one line and exit 1.

Each case runs the real entry point in-process and checks: exit code 1, one short
line on stderr that mentions the problem and no traceback, the input unchanged and
nothing left in the output folder. ``inspect`` only reads: it still summarizes a
model whose opset, domain or weights are bad, and says what is wrong with it.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from rich.console import Console

from edgeopt import cli
from edgeopt.cli import console
from edgeopt.testing.bad_models import BAD_DATA, BAD_MODELS, BadInput, text_encoder, write_good_model

Argv = Callable[[Path, Path, Path], list[str]]
"""(model or data, output folder, a compile folder of the good model) -> the command line."""

MODEL_VERBS: dict[str, Argv] = {
    "inspect": lambda m, o, c: ["inspect", str(m)],
    "optimize": lambda m, o, c: ["optimize", str(m), "-o", str(o / "out.onnx")],
    "quantize": lambda m, o, c: ["quantize", str(m), "-o", str(o / "out.onnx"), "--mode", "dynamic"],
    "prune": lambda m, o, c: ["prune", str(m), "-o", str(o / "out.onnx")],
    "drop-layers": lambda m, o, c: ["drop-layers", str(m), "-o", str(o / "out.onnx"), "--count", "1",
                                    "--calib", "random:2"],
    "share-weights": lambda m, o, c: ["share-weights", str(m), "-o", str(o / "out.onnx")],
    "low-rank": lambda m, o, c: ["low-rank", str(m), "-o", str(o / "out.onnx")],
    "compile": lambda m, o, c: ["compile", str(m), "-o", str(o / "compiled"), "-t", "ort-cpu"],
    "validate": lambda m, o, c: ["validate", str(c), "--data", "random:2", "--reference", str(m),
                                 "--report-dir", str(o / "report")],
    "analyze": lambda m, o, c: ["analyze", str(m), "--calib", "random:2"],
    "convert-opset": lambda m, o, c: ["convert-opset", str(m), "-o", str(o / "out.onnx"), "--to", "18"],
}
"""Each verb on a model (``validate``: the model is the fp32 reference)."""


def _with_calib(verb: str, *extra: str) -> Argv:
    def argv(d: Path, o: Path, c: Path) -> list[str]:
        output = o / ("compiled" if verb == "compile" else "out.onnx")
        return [verb, str(c.parent / "good.onnx"), "-o", str(output), "--calib", str(d), *extra]

    return argv


DATA_VERBS: dict[str, Argv] = {
    "quantize": _with_calib("quantize"),
    "prune": _with_calib("prune", "--criterion", "activation"),
    "drop-layers": _with_calib("drop-layers", "--count", "1"),
    "share-weights": _with_calib("share-weights"),
    "low-rank": _with_calib("low-rank"),
    "compile": _with_calib("compile", "-t", "ort-cpu-int8"),
    "validate": lambda d, o, c: ["validate", str(c), "--data", str(d),
                                 "--report-dir", str(o / "report")],
}
"""Each verb that reads sample data, on the good model with bad data."""

INSPECTABLE = {"opset-99", "unknown-domain", "nan-weights", "inf-weights"}
"""Bad models that ``inspect`` still summarizes, noting what is wrong."""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``good.onnx`` and its ``compiled/`` folder (ort-cpu), shared by the module; returns the folder."""
    from edgeopt.deploy.compile import compile_model

    root = tmp_path_factory.mktemp("good")
    good = write_good_model(root)
    compile_model(good, root / "compiled", targets=["ort-cpu"])
    return root / "compiled"


def _digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(console, "out", Console(width=300))
    monkeypatch.setattr(console, "err", Console(stderr=True, width=300))
    monkeypatch.setattr(sys, "argv", ["edgeopt", *argv])
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, out: str, err: str, case: BadInput, path: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 1, f"exit {code}; stderr: {err[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("error: ") and len(lines[0]) < 600, lines[0]
    said = lines[0].replace(str(path.resolve()), "INPUT")  # the file's name must not be what matches
    assert re.search(case.mentions, said, re.IGNORECASE), f"{case.mentions!r} not in: {said}"
    assert "internal error" not in lines[0], lines[0]
    assert out == "", out


@pytest.mark.parametrize("case", BAD_MODELS, ids=lambda c: c.name)
@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_bad_model(
    verb: str, case: BadInput, compiled: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    model = case.write(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = {**_digest(model), **_digest(compiled)}

    code, out, err = _main(monkeypatch, capsys, MODEL_VERBS[verb](model, out_dir, compiled))

    if verb == "inspect" and case.name in INSPECTABLE:
        assert code == 0, err
        assert re.search(case.mentions, out.replace(str(model.resolve()), "INPUT"), re.IGNORECASE), out
    else:
        _assert_one_line_error(code, out, err, case, model)
    assert {**_digest(model), **_digest(compiled)} == before
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("case", BAD_DATA, ids=lambda c: c.name)
@pytest.mark.parametrize("verb", DATA_VERBS)
def test_bad_calibration_data(
    verb: str, case: BadInput, compiled: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    data = case.write(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = {**_digest(data), **_digest(compiled.parent)}

    code, out, err = _main(monkeypatch, capsys, DATA_VERBS[verb](data, out_dir, compiled))

    _assert_one_line_error(code, out, err, case, data)
    assert {**_digest(data), **_digest(compiled.parent)} == before
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_good_model_passes(
    verb: str, compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The corpus's base model is fine for every verb, so a failure above is the bad input's."""
    code, _, err = _main(monkeypatch, capsys, MODEL_VERBS[verb](compiled.parent / "good.onnx", tmp_path, compiled))

    assert code == 0, err


@pytest.mark.parametrize("verb", ["quantize", "share-weights", "low-rank"])
def test_verbs_without_data_feed_valid_token_ids(
    verb: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Random inputs for the fidelity check stay inside the embedding tables (a 2-row token-type table)."""
    model = tmp_path / "encoder.onnx"
    onnx.save(text_encoder(), model)
    extra = {"quantize": ["--mode", "dynamic"], "share-weights": ["--clusters", "32", "--min-elements", "64"],
             "low-rank": ["--min-elements", "64"]}[verb]

    code, _, err = _main(monkeypatch, capsys, [verb, str(model), "-o", str(tmp_path / "out.onnx"), *extra])

    assert code == 0, err
    assert (tmp_path / "out.onnx").is_file()


def test_an_unexpected_exception_is_one_line_and_debug_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import edgeopt.core.inspect_model

    def broken(*args: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(edgeopt.core.inspect_model, "summarize", broken)
    model = write_good_model(tmp_path)

    code, out, err = _main(monkeypatch, capsys, ["inspect", str(model)])

    assert code == 1 and out == ""
    assert err.strip() == "error: internal error in inspect: RuntimeError: boom; rerun with --debug and report it."
    with pytest.raises(RuntimeError, match="boom"):
        _main(monkeypatch, capsys, ["--debug", "inspect", str(model)])
