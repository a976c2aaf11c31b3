"""ONNX -> TFLite conversion, run as ``python -m edgeopt.targets.tflite_worker JOB.json`` in a subprocess.

TensorFlow and onnx2tf load only here, so they never enter the caller's process
and a crash in them cannot take it down. One job converts one model once:
onnx2tf writes the SavedModel and the float32 / float16 ``.tflite`` files, then
``tf.lite.TFLiteConverter`` turns the SavedModel into dynamic-range int8 and, when
calibration batches are given, full-integer int8 with int8 I/O. Every file gets
the I/O mapping (ONNX name, transpose) embedded as ``edgeopt_io`` metadata, and
the worker writes ``result.json`` (or ``error.json``) into the job's folder.

The job (JSON): ``onnx`` (a private copy: onnx2tf overwrites its input),
``work_dir``, ``input_shapes`` ({name: static shape}), ``keep_shape`` (inputs
onnx2tf must not transpose), ``value_hints`` (``name:value`` for onnx2tf's dummy
inference), ``calibration`` (a folder of ``NNNNNN.npz`` batches
in ONNX layout, or null), ``base`` (run onnx2tf; false when the SavedModel is
already in ``work_dir``) and ``int8_out`` (the full-integer file to write, or null).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.targets.tflite_io import FLOAT_FILES, embed_io, io_mapping_from_probe

_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # the name onnx2tf 1.29.24 looks for


def main(job_file: str) -> int:
    job = json.loads(Path(job_file).read_text())
    work = Path(job["work_dir"])
    try:
        if job["base"]:
            _onnx2tf(job, work)
        if job.get("int8_out"):
            _full_int8(job, work)
    except Exception as e:  # reported to the parent as one line + traceback file
        (work / "error.json").write_text(json.dumps({
            "type": type(e).__name__, "message": str(e).splitlines()[0] if str(e) else "",
            "traceback": traceback.format_exc(),
        }))
        return 1
    return 0


def _onnx2tf(job: dict[str, Any], work: Path) -> None:
    import onnx2tf
    import tensorflow as tf

    shapes = job["input_shapes"]
    simplified = _simplify(job["onnx"], shapes)
    # For 3-channel image inputs onnx2tf loads sample images for its own dummy inference from
    # ./<_SAMPLE>, downloading them if absent (fails offline): give it deterministic ones instead.
    sample = Path.cwd() / _SAMPLE
    np.save(sample, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    try:
        onnx2tf.convert(
            input_onnx_file_path=job["onnx"],
            not_use_onnxsim=simplified,
            output_folder_path=str(work / "saved_model"),
            copy_onnx_input_output_names_to_tflite=True,
            output_signaturedefs=True,
            overwrite_input_shape=[f"{n}:{','.join(map(str, s))}" for n, s in shapes.items()] or None,
            keep_shape_absolutely_input_names=job["keep_shape"] or None,
            value_hints=job.get("value_hints") or None,
            non_verbose=True,
            verbosity="error",
        )
    finally:
        sample.unlink()
    stem = Path(job["onnx"]).stem
    produced = {"float32": f"{stem}_float32.tflite", "float16": f"{stem}_float16.tflite"}
    converter = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    (work / "saved_model" / "dynamic_int8.tflite").write_bytes(converter.convert())
    produced["dynamic_int8"] = "dynamic_int8.tflite"
    (work / "io.json").write_text(json.dumps(shapes))
    for kind, name in produced.items():
        mapping = io_mapping_from_probe(job["onnx"], work / "saved_model" / name, shapes)
        embed_io(work / "saved_model" / name, work / FLOAT_FILES[kind], mapping)


def _simplify(path: str, shapes: dict[str, list[int]]) -> bool:
    """Run onnxsim in this process, as onnx2tf would in three CLI runs (about 10 s each); False if it fails.

    On failure onnx2tf runs the ``onnxsim`` CLI itself, the way it always does.
    """
    import onnx
    import onnxsim

    try:
        model = onnx.load(path)
        for _ in range(3):
            model, ok = onnxsim.simplify(model, overwrite_input_shapes=shapes or None)
            if not ok:
                return False
        onnx.save(model, path)
    except Exception as e:  # onnxsim has many failure modes; the CLI path is onnx2tf's own fallback
        print(f"in-process onnxsim failed ({type(e).__name__}: {e}); onnx2tf runs the onnxsim CLI", file=sys.stderr)
        return False
    return True


def _full_int8(job: dict[str, Any], work: Path) -> None:
    import tensorflow as tf

    shapes = json.loads((work / "io.json").read_text())
    mapping = io_mapping_from_probe(job["onnx"], work / "saved_model" / f"{Path(job['onnx']).stem}_float32.tflite",
                                    shapes)
    calib = Path(job["calibration"])

    first = mapping["inputs"][0]["onnx_name"]
    step = max(1, shapes[first][0] if shapes[first] else 1)  # the artifact's static batch

    def representative() -> Iterator[dict[str, np.ndarray]]:
        for file in sorted(calib.glob("*.npz")):
            with np.load(file) as batch:
                for row in range(0, len(batch[first]) - step + 1, step):
                    yield {spec["name"]: _floats32(np.transpose(batch[spec["onnx_name"]][row:row + step],
                                                                spec["perm"])) for spec in mapping["inputs"]}

    def convert(strict: bool) -> bytes:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model"))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.target_spec.supported_ops = ops if strict else [*ops, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return bytes(converter.convert())

    try:
        data = convert(strict=True)
    except Exception:  # some op has no int8 kernel: keep it in float so the caller can list them all
        data = convert(strict=False)
    staging = Path(job["int8_out"] + ".raw")
    staging.write_bytes(data)
    embed_io(staging, Path(job["int8_out"]), io_mapping_from_probe(job["onnx"], staging, shapes))
    staging.unlink()


def _floats32(array: np.ndarray) -> np.ndarray:
    """float32 for float data (the converter's float inputs); integer inputs (token ids) keep their dtype."""
    return array.astype(np.float32) if array.dtype.kind == "f" else array


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main(sys.argv[1]))
