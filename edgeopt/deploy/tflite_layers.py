"""Per-layer comparison of a quantized TFLite artifact with the float TFLite artifact of the same model.

Both come from the same onnx2tf SavedModel, so their tensors share names. Both
run in the LiteRT interpreter with ``experimental_preserve_all_tensors`` (a
debugging mode that keeps every intermediate); each op output present in both
with the same shape is dequantized and compared: SQNR and cosine accumulated
over the samples, and the SQNR an op *introduces* (worst input SQNR minus its
output's), which is what points at the layer to fix (onnx2tf #258).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.core.runtime import Feeds


class _Sums:
    def __init__(self) -> None:
        self.signal = self.noise = self.dot = self.other = 0.0

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        self.signal += float(r @ r)
        self.noise += float((r - g) @ (r - g))
        self.dot += float(r @ g)
        self.other += float(g @ g)

    def sqnr(self) -> float:
        if self.noise == 0:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf

    def cosine(self) -> float:
        norm = math.sqrt(self.signal * self.other)
        return self.dot / norm if norm > 0 else float(self.noise == 0)


def _interpreter(path: Path) -> Any:
    from edgeopt.deploy.bundle_runner import _interpreter_class

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "preserve_all_tensors is for debugging": it is
        interpreter = _interpreter_class()(model_path=str(path), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter: Any, feeds: Feeds) -> None:
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    if set(feeds) <= set(inputs):
        for name, array in feeds.items():
            interpreter.set_tensor(inputs[name], array)
        interpreter.invoke()
    else:
        interpreter.get_signature_runner()(**feeds)


def _real(interpreter: Any, detail: dict[str, Any]) -> np.ndarray | None:
    value = np.array(interpreter.get_tensor(detail["index"]))
    if value.dtype.kind == "f":
        return value
    scales = detail["quantization_parameters"]["scales"]
    if value.dtype.kind in "iu" and len(scales) == 1 and scales[0] > 0:
        zero = detail["quantization_parameters"]["zero_points"][0]
        return (value.astype(np.float64) - zero) * scales[0]
    return None


def compare_layers(float_artifact: Path, quant_artifact: Path, pairs: Iterable[tuple[Feeds, Feeds]],
                   *, top: int = 10) -> list[dict[str, Any]]:
    """Ops of ``quant_artifact`` ranked by the SQNR they introduce vs ``float_artifact``.

    Args:
        float_artifact: The float32 ``.tflite`` of the same conversion.
        quant_artifact: The quantized ``.tflite``.
        pairs: Per sample, (native feeds of the float artifact, native feeds of the quantized one).
        top: How many ops to return.
    """
    ref, got = _interpreter(float_artifact), _interpreter(quant_artifact)
    ref_details = {d["name"]: d for d in ref.get_tensor_details()}
    got_details = {d["name"]: d for d in got.get_tensor_details()}
    # op list in execution order, with tensor indices; a delegate node repeats the outputs of the ops it took
    ops = [op for op in got._get_ops_details() if op["op_name"] != "DELEGATE"]
    names = {d["index"]: d["name"] for d in got_details.values()}
    outputs = [names[i] for op in ops for i in op["outputs"] if i >= 0]
    shared = [n for n in dict.fromkeys(outputs)
              if n in ref_details and tuple(ref_details[n]["shape"]) == tuple(got_details[n]["shape"])]
    sums = {name: _Sums() for name in shared}
    for ref_feeds, got_feeds in pairs:
        _run(ref, ref_feeds)
        _run(got, got_feeds)
        for name in shared:
            r, g = _real(ref, ref_details[name]), _real(got, got_details[name])
            if r is not None and g is not None:
                sums[name].update(r, g)
    sqnr = {name: s.sqnr() for name, s in sums.items() if s.signal or s.noise}
    rows = []
    for op in ops:
        for index in op["outputs"]:
            name = names.get(index)
            if name not in sqnr:
                continue
            upstream = [sqnr[names[i]] for i in op["inputs"] if i >= 0 and names.get(i) in sqnr]
            worst = min(upstream, default=math.inf)
            introduced = min(worst, 100.0) - min(sqnr[name], 100.0)
            rows.append({"node": name, "op": op["op_name"], "tensor": name, "sqnr_db": sqnr[name],
                         "cosine": sums[name].cosine(), "introduced_db": introduced})
    rows.sort(key=lambda row: -row["introduced_db"])
    return rows[:top]
