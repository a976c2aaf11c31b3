"""One quantizer run in its own process, for ``bench/int8_peers.py``: time and peak memory of that tool alone.

    python bench/peer_quantize.py TOOL MODEL.onnx OUT.onnx CALIB.npz... [--transformer] [--iterations N]

TOOL: ``edgeopt`` (its public API with default settings), ``ort``, ``ort-reduce-range``,
``nncf-performance``, ``nncf-mixed``, ``aimet-adaround``. The calibration batches are ``.npz`` files
(input name -> array) read one at a time. Prints one JSON line: ``seconds`` (the quantizer's call,
after imports), ``rss_before_mib`` (after imports), ``peak_rss_mib`` (the process's high-water mark),
and ``notes``. Needs only numpy, onnx and the tool itself, so it can run in another virtual
environment (AIMET's, whose torch and onnx2torch differ from edgeopt's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

Feeds = dict[str, np.ndarray]


class Batches:
    """Re-iterable, indexable calibration batches (one ``.npz`` loaded at a time); also an ORT data reader."""

    def __init__(self, files: list[Path], *, single: bool = False) -> None:
        self.files, self.single = files, single
        self._it: Iterator[Feeds] | None = None

    def _load(self, f: Path) -> Feeds:
        with np.load(f) as z:
            return {k: np.array(z[k]) for k in z.files}

    def __iter__(self) -> Iterator[Feeds]:
        for f in self.files:
            feeds = self._load(f)
            if not self.single:
                yield feeds
                continue
            for i in range(len(next(iter(feeds.values())))):
                yield {k: v[i:i + 1] for k, v in feeds.items()}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Feeds:
        return self._load(self.files[i])

    def get_next(self) -> Feeds | None:
        if self._it is None:
            self._it = iter(self)
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _edgeopt(model: Path, out: Path, calib: Batches, args: argparse.Namespace) -> str:
    from edgeopt.quantization import QuantizeConfig, quantize_file

    config = QuantizeConfig()
    result = quantize_file(model, out, config, calibration=calib)
    return (f"QuantizeConfig() defaults (cpu={result.cpu}, {result.guarded_weights} weight tensors guarded); "
            f"time includes its own check on up to {config.eval_samples} calibration samples")


def _ort(model: Path, out: Path, calib: Batches, args: argparse.Namespace) -> str:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    reduce_range = args.tool == "ort-reduce-range"
    quantize_static(str(model), str(out), calib, quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return f"quantize_static QDQ, per-channel, U8 activations, S8 weights, MinMax, reduce_range={reduce_range}"


def _nncf(model: Path, out: Path, calib: Batches, args: argparse.Namespace) -> str:
    import nncf
    import onnx

    preset = nncf.QuantizationPreset.MIXED if args.tool == "nncf-mixed" else nncf.QuantizationPreset.PERFORMANCE
    single = Batches(calib.files, single=True)  # NNCF's statistics expect one sample per item
    samples = sum(1 for _ in single)
    quantized = nncf.quantize(onnx.load(str(model)), nncf.Dataset(single), preset=preset, subset_size=samples,
                              model_type=nncf.ModelType.TRANSFORMER if args.transformer else None)
    onnx.save(quantized, str(out))
    return (f"nncf.quantize preset={preset.value}, subset_size={samples}, fast bias correction"
            + (", model_type=TRANSFORMER" if args.transformer else ""))


def _aimet(model: Path, out: Path, calib: Batches, args: argparse.Namespace) -> str:
    import aimet_onnx
    import onnx
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight

    config_dir = Path(aimet_onnx.__file__).parent / "common" / "quantsim_config"
    proto = onnx.load(str(model))
    fold_all_batch_norms_to_weight(proto)
    sim = aimet_onnx.QuantizationSimModel(proto, param_type="int8", activation_type="int8",  # exported as uint8
                                          quant_scheme="min_max",
                                          config_file=str(config_dir / "default_config_per_channel.json"),
                                          providers=["CPUExecutionProvider"])
    inputs = list(calib)
    aimet_onnx.apply_adaround(sim, inputs, num_iterations=args.iterations)
    sim.compute_encodings(inputs)
    onnx.save(sim.to_onnx_qdq(), str(out))
    return (f"batch-norm folding, QuantizationSimModel(int8 per-channel weights, uint8 activations, min_max), "
            f"apply_adaround(num_iterations={args.iterations}), compute_encodings, to_onnx_qdq")


IMPORTS = {"edgeopt": "edgeopt.quantization", "ort": "onnxruntime.quantization",
           "ort-reduce-range": "onnxruntime.quantization", "nncf-performance": "nncf", "nncf-mixed": "nncf",
           "aimet-adaround": "aimet_onnx"}
TOOLS = {"edgeopt": _edgeopt, "ort": _ort, "ort-reduce-range": _ort, "nncf-performance": _nncf,
         "nncf-mixed": _nncf, "aimet-adaround": _aimet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=sorted(TOOLS))
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("calib", type=Path, nargs="+")
    parser.add_argument("--transformer", action="store_true")
    parser.add_argument("--iterations", type=int, default=10000, help="AdaRound steps per layer")
    args = parser.parse_args()
    run = TOOLS[args.tool]
    __import__(IMPORTS[args.tool])  # imports are set-up, not quantization: load them before the clock starts
    before = _status_mib("VmRSS")
    tmp = args.out.with_name(args.out.name + f".tmp{os.getpid()}.onnx")
    started = time.perf_counter()
    notes = run(args.model, tmp, Batches(args.calib), args)
    seconds = time.perf_counter() - started
    os.replace(tmp, args.out)
    print(json.dumps({"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": _status_mib("VmHWM"),
                      "notes": notes, "python": sys.executable}))


if __name__ == "__main__":
    main()
