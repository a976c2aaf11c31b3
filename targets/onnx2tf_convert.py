"""Convert an ONNX model to TFLite once, in a subprocess, cached by model hash (+ calibration).

One onnx2tf conversion serves all four TFLite targets: the float32, float16 and
dynamic-range int8 files come from the base conversion, cached under
``<cache>/<model hash>/``; a full-integer int8 file is added per calibration
set (``model_int8_<calibration hash>.tflite``). onnx2tf's quirks are handled
here so no caller sees them: it gets a private copy of the model (it overwrites
its input), the venv's ``bin`` on ``PATH`` (it shells out to ``onnxsim`` and
silently skips simplification otherwise), static input shapes (dynamic batch
dims fixed to 1), ``keep_shape_absolutely_input_names`` for every input that is
not a 4-D image (it would transpose ``[1, 16, 64]`` to ``[1, 64, 16]``), and our
own calibration data (it would download a sample image otherwise). Everything
runs in a temporary folder inside the cache, renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import BackendNotInstalledError, CalibrationDataError, ConversionError
from edgeopt.core.model_io import serialize_with_data
from edgeopt.core.runtime import Feeds, model_inputs
from edgeopt.data.readers import CalibrationReader, batches
from edgeopt.targets.tflite_io import FLOAT_FILES, INSTALL_HINT

try:
    import fcntl
except ImportError:  # Windows: no lock; a concurrent conversion of the same model just repeats the work
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

ONNX2TF_VERSION = "1.29.24"
_FORMAT = "2"  # bump when the cached files change meaning
_TIMEOUT_S = 3600
_FAILED: dict[str, str] = {}  # cache key -> message of a conversion that failed in this process


def cache_root() -> Path:
    """``$EDGEOPT_CACHE_DIR/tflite``, else ``$XDG_CACHE_HOME/edgeopt/tflite`` (``~/.cache`` by default)."""
    if os.environ.get("EDGEOPT_CACHE_DIR"):
        return Path(os.environ["EDGEOPT_CACHE_DIR"]) / "tflite"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeopt" / "tflite"


def require_backend() -> None:
    """Raise :class:`BackendNotInstalledError` unless onnx2tf, TensorFlow and LiteRT are importable."""
    missing = [m for m in ("onnx2tf", "tensorflow", "ai_edge_litert") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendNotInstalledError(f"TFLite targets need {', '.join(missing)}. Install them: {INSTALL_HINT}")


def static_shapes(model: ir.Model) -> dict[str, list[int]]:
    """Input shapes for the conversion: a dynamic leading (batch) dim becomes 1; other dims must be static."""
    shapes = {}
    for value in model_inputs(model):
        dims = list(value.shape.dims) if value.shape is not None else []
        shapes[value.name or ""] = [d if isinstance(d, int) else 1 for d in dims]
    return shapes


def converted(model: ir.Model, kind: str) -> Path:
    """The cached float32 / float16 / dynamic_int8 file of ``model``, converting it first if needed.

    The full-integer file is not made here: tflite-npu converts the model with its weights moved by
    learned rounding (``round-weights``), whose conversion is its own (:func:`converted_int8`).
    """
    require_backend()
    key = cache_key(model)
    with _locked(key):
        return _base(model, key) / FLOAT_FILES[kind]


def converted_int8(model: ir.Model, calibration: CalibrationReader, *, limit: int) -> Path:
    """The cached full-integer int8 file of ``model`` calibrated on ``calibration`` (up to ``limit`` samples).

    A model not converted yet is converted and quantized in one worker run.
    """
    require_backend()
    key = cache_key(model)
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root(), prefix=".calib-") as tmp, _locked(key):
        name = f"model_int8_{_write_calibration(model, calibration, Path(tmp), limit)}.tflite"
        base = _base(model, key, int8=(tmp, name))
        if not (base / name).exists():
            staging = Path(tmp) / name
            _run_worker({"onnx": str(base / "model.onnx"), "work_dir": str(base), "base": False,
                         "calibration": tmp, "int8_out": str(staging)}, Path(tmp), "full-integer int8")
            os.replace(staging, base / name)
    return base / name


def _write_calibration(model: ir.Model, calibration: CalibrationReader, folder: Path, limit: int) -> str:
    """Write checked batches as ``NNNNNN.npz`` one at a time (bounded memory); return their hash."""
    digest = hashlib.sha256()
    count = 0
    for count, feeds in enumerate(calibration_batches(model, calibration, limit=limit), start=1):
        for name in sorted(feeds):
            digest.update(name.encode())
            digest.update(str(feeds[name].shape).encode())
            digest.update(np.ascontiguousarray(feeds[name]).tobytes())
        np.savez(folder / f"{count:06d}.npz", **feeds)  # type: ignore[arg-type]
    if count == 0:
        raise CalibrationDataError("calibration data: the reader yielded no feeds. Give it at least one sample.")
    return digest.hexdigest()[:16]


def calibration_batches(model: ir.Model, calibration: CalibrationReader, *, limit: int) -> Iterator[Feeds]:
    """Checked calibration feeds re-batched to the model's static batch (``prepare()`` fixes it to 1).

    The same rule as ort-npu: :func:`edgeopt.data.readers.batches` with ``batch_size`` = the static
    batch, so a file of 64 rows calibrates a batch-1 model with 64 samples; samples past ``limit`` are
    not read. A model with a dynamic batch takes the feeds as they come.
    """
    static = [v.shape[0] for v in model_inputs(model) if v.shape is not None and v.shape.rank() > 0
              and isinstance(v.shape[0], int)]
    return batches(calibration, model, batch_size=int(static[0]) if static else None, limit=limit)


def cache_key(model: ir.Model) -> str:
    """The cache folder name of ``model``: a hash of its serialized bytes and the converter version."""
    data = serialize_with_data(model).SerializeToString(deterministic=True)
    return hashlib.sha256(f"{_FORMAT}/{ONNX2TF_VERSION}/".encode() + data).hexdigest()[:24]


@contextlib.contextmanager
def _locked(key: str) -> Iterator[None]:
    """Hold ``<cache>/<key>.lock`` so two processes converting the same model do it once."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{key}.lock").open("w") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _base(model: ir.Model, key: str, *, int8: tuple[str, str] | None = None) -> Path:
    """The cache folder of ``model``'s conversion; with ``int8`` (calibration folder, file name) also quantize.

    """
    root = cache_root()
    done = root / key
    if (done / "io.json").is_file():
        logger.info("tflite: reusing the cached conversion %s", done)
        return done
    if key in _FAILED:  # the other TFLite targets of one compile do not retry a failed conversion
        raise ConversionError(_FAILED[key])
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
    try:
        data = serialize_with_data(model).SerializeToString(deterministic=True)
        (work / "model.onnx").write_bytes(data)  # onnx2tf's private copy; the caller's model is untouched
        (work / "source.onnx").write_bytes(data)
        shapes = static_shapes(model)
        keep = [name for name, shape in shapes.items() if len(shape) != 4]
        # onnx2tf's own dummy inference feeds integer inputs random values, out of range for small
        # embedding tables (BERT's 2-row token types): index 0 is valid for any table.
        hints = [f"{v.name}:0" for v in model_inputs(model) if v.dtype is not None and v.dtype.is_integer()]
        _run_worker({"onnx": str(work / "model.onnx"), "work_dir": str(work), "base": True, "value_hints": hints,
                     "input_shapes": shapes, "keep_shape": keep, "calibration": int8[0] if int8 else None,
                     "int8_out": str(work / int8[1]) if int8 else None},
                    work, "onnx2tf")
        (work / "source.onnx").replace(work / "model.onnx")  # the SavedModel's source, for later int8 jobs
        work.rename(done)
    except ConversionError as e:
        shutil.rmtree(work, ignore_errors=True)
        if int8 is None:  # the float conversion itself failed
            _FAILED[key] = str(e)
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("tflite: converted with onnx2tf into %s", done)
    return done


def _run_worker(job: dict[str, object], work: Path, what: str) -> None:
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", PYTHONUNBUFFERED="1")
    log = work / "worker.log"
    with log.open("w") as sink:
        try:
            done = subprocess.run([sys.executable, "-m", "edgeopt.targets.tflite_worker", str(job_file)],
                                  cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired as e:
            raise ConversionError(f"{what} did not finish in {_TIMEOUT_S} s; nothing was written. "
                                  "Simplify the model (edgeopt optimize) and retry.") from e
    if done.returncode == 0:
        return
    kept = cache_root() / "failed.log"
    shutil.copyfile(log, kept)
    error_file = work / "error.json"
    if error_file.is_file():
        error = json.loads(error_file.read_text())
        kept.write_text(error["traceback"] + "\n--- worker output ---\n" + log.read_text())
        reason = f"{error['type']}: {error['message']}"[:300]
    else:
        reason = f"the converter process died with exit code {done.returncode}"
    node = re.search(r"onnx_op_name: (\S+)", kept.read_text())  # onnx2tf logs the node it failed on
    if node:
        reason += f" at ONNX node '{node.group(1)}'"
    raise ConversionError(f"{what} failed ({reason}); nothing was written. Full log: {kept}. "
                          "Run `edgeopt check` for unsupported ops, or simplify the model with `edgeopt optimize`.")
