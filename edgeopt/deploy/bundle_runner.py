"""Run a device bundle's artifacts and write their raw outputs: ``python run_bundle.py BUNDLE --out DIR``.

This file is copied into every bundle as ``run_bundle.py`` and must run on a
device that has only numpy and the artifact's runtime: onnxruntime for
``.onnx``/``.ort`` files, ai_edge_litert (or tflite_runtime) for ``.tflite``. So
it imports nothing from edgeopt, and the host uses the same :func:`load` for its
in-process runs. For each artifact it warms up on the first run (untimed), then
runs every stored input once, timing each call, and writes ``DIR/<target>/
<run>_<k>.npy`` (output ``k`` in the bundle's order) and ``DIR/<target>/timings.json``.
An artifact that fails (its runtime missing here, its file damaged) gets
``DIR/<target>/error.txt`` and a line on stderr instead, and the others still run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


GPU_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def load(path: str | os.PathLike[str], providers: tuple[str, ...] = ("CPUExecutionProvider",), *,
         reference_kernels: bool = False) -> Runner:
    """A callable that runs one set of native feeds through the artifact, chosen by file extension.

    ``providers``: onnxruntime execution providers in order of preference; those this build lacks are
    skipped (GPU artifacts list CUDA first and fall back to the CPU where there is none).
    ``reference_kernels``: TFLite only: the interpreter's reference kernels (no XNNPACK, no
    optimized kernels), the arithmetic the optimized ones should reproduce.
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".onnx", ".ort"):
        return _onnxruntime(str(path), providers)
    if suffix == ".tflite":
        return _litert(str(path), reference_kernels=reference_kernels)
    raise ValueError(f"{path}: no runtime for '{suffix}' files (expected .onnx, .ort or .tflite)")


def _onnxruntime(path: str, providers: tuple[str, ...]) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()  # default graph optimizations, as deployed
    options.log_severity_level = 3
    available = ort.get_available_providers()
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    session = ort.InferenceSession(path, options, providers=chosen)
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds), strict=True))

    return run


def _interpreter_class() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
    return Interpreter  # type: ignore[no-any-return]


def _litert(path: str, *, reference_kernels: bool = False) -> Runner:
    if reference_kernels:
        from ai_edge_litert.interpreter import OpResolverType

        interpreter = _interpreter_class()(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    else:
        interpreter = _interpreter_class()(model_path=path)
    interpreter.allocate_tensors()
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = interpreter.get_output_details()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not set(feeds) <= set(inputs):  # keyed by signature names instead of tensor names
            return {k: np.asarray(v) for k, v in interpreter.get_signature_runner()(**feeds).items()}
        resized = False
        for name, array in feeds.items():
            if tuple(inputs[name]["shape"]) != array.shape:
                interpreter.resize_tensor_input(inputs[name]["index"], list(array.shape))
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, array in feeds.items():
            interpreter.set_tensor(inputs[name]["index"], array)
        interpreter.invoke()
        return {d["name"]: np.array(interpreter.get_tensor(d["index"])) for d in outputs}

    return run


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_artifact(bundle: Path, entry: dict, out: Path, *, warmup: int) -> None:
    """Check the artifact's sha256, run every stored input; write outputs and per-call timings."""
    if entry.get("sha256") and _sha256(bundle / entry["file"]) != entry["sha256"]:
        raise ValueError(f"{bundle / entry['file']}: sha256 differs from bundle.json (damaged in transfer?). "
                         "Copy the bundle again.")
    runner = load(bundle / entry["file"], tuple(entry.get("providers", ("CPUExecutionProvider",))))
    folder = out / entry["target"]
    folder.mkdir(parents=True, exist_ok=True)

    def feeds(run: dict) -> dict[str, np.ndarray]:
        return {name: np.load(bundle / file) for name, file in zip(entry["inputs"], run["inputs"], strict=True)}

    if entry["runs"]:
        first = feeds(entry["runs"][0])
        for _ in range(warmup):
            runner(first)
    seconds = []
    for index, run in enumerate(entry["runs"]):
        loaded = feeds(run)
        start = time.perf_counter()
        result = runner(loaded)
        seconds.append(time.perf_counter() - start)
        for k, name in enumerate(entry["outputs"]):
            np.save(folder / f"{index:06d}_{k}.npy", result[name])
    (folder / "timings.json").write_text(json.dumps({"seconds": seconds, "warmup": warmup}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an edgeopt device bundle.")
    parser.add_argument("bundle", type=Path, help="the bundle folder (holds bundle.json)")
    parser.add_argument("--out", type=Path, required=True, help="where to write outputs")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: the bundle's)")
    parser.add_argument("--only", action="append", default=[], help="run only this target (repeatable)")
    args = parser.parse_args(argv)
    spec = json.loads((args.bundle / "bundle.json").read_text())
    warmup = spec["warmup"] if args.warmup is None else args.warmup
    args.out.mkdir(parents=True, exist_ok=True)
    for entry in spec["artifacts"]:
        if not args.only or entry["target"] in args.only:
            try:
                run_artifact(args.bundle, entry, args.out, warmup=warmup)
            except Exception as e:  # noqa: BLE001 - one artifact failing (no runtime here, a bad file) stops no other
                message = f"{type(e).__name__}: {' '.join(str(e).split())}"
                (args.out / entry["target"]).mkdir(parents=True, exist_ok=True)
                (args.out / entry["target"] / "error.txt").write_text(message)
                (args.out / entry["target"] / "timings.json").unlink(missing_ok=True)
                print(f"{entry['target']}: {message}", file=sys.stderr)
    versions = {"python": sys.version.split()[0], "machine": platform.machine(), "numpy": np.__version__}
    (args.out / "device.json").write_text(json.dumps({"platform": platform.platform(), **versions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
