"""What a target backend is: the interface every entry of ``edgeopt.targets`` implements.

Looking a target up by name is the deploy road's job (:mod:`edgeopt.deploy.target_registry`):
the core never imports the targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import onnx_ir as ir

from edgeopt.core.errors import UnsupportedOpError
from edgeopt.core.runtime import CalibrationReader, Feeds


@dataclass(frozen=True)
class Issue:
    """One thing in a model that a target cannot run."""

    node: str
    op: str
    message: str
    hint: str
    fatal: bool = True
    """False for what the runtime still runs, elsewhere (an NPU node that falls back to the CPU)."""

    def __str__(self) -> str:
        return f"node '{self.node}' ({self.op}): {self.message}. {self.hint}"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact, as its runtime sees it."""

    name: str  # the name in the artifact (TFLite renames; ONNX keeps the model's)
    onnx_name: str  # the name in the ONNX model it came from
    shape: tuple[int | str, ...]  # str for a dynamic dimension
    dtype: str  # numpy dtype name: "float32", "int8", ...
    layout: str | None = None  # "NCHW", "NHWC" or None where layout means nothing
    scale: float | None = None  # quantized I/O: real = (q - zero_point) * scale
    zero_point: int | None = None


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class Target(Protocol):
    """A runtime + device pair that edgeopt emits and validates artifacts for.

    ``run`` takes and returns tensors in the ONNX model's convention (names, NCHW,
    float32 where the model is float), so every artifact is compared the same way.
    ``encode_inputs`` / ``run_native`` / ``decode_outputs`` split it for the device
    bundle: the bundle carries encoded inputs, the device runs them natively, the
    host decodes what comes back. ``run(a, f) == decode_outputs(a, run_native(a,
    encode_inputs(a, f)))``.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    runtime: ClassVar[str]  # "onnxruntime" | "litert"
    device: ClassVar[str]  # "cpu" | "gpu" | "npu"
    precision: ClassVar[str]  # "fp32", "fp16", "int8", "int8-dynamic", "a16w8", ...
    needs_calibration: ClassVar[bool]

    def check(self, model: ir.Model) -> list[Issue]:
        """Every unsupported op / dtype in ``model``, all at once; never raises."""
        ...

    def prepare(self) -> ir.passes.PassBase:
        """The passes that make a model ready for this target."""
        ...

    def export(
        self, model: ir.Model, out_dir: Path, *, calibration: CalibrationReader | None = None
    ) -> Path:
        """Write the artifact into ``out_dir`` and return its path."""
        ...

    def signature(self, artifact: Path) -> Signature:
        """The artifact's inputs and outputs as its runtime sees them."""
        ...

    def encode_inputs(self, artifact: Path, feeds: Feeds) -> Feeds:
        """ONNX-convention feeds -> the artifact's own (renamed, transposed, quantized)."""
        ...

    def run_native(self, artifact: Path, feeds: Feeds) -> Feeds:
        """Run encoded feeds in the artifact's runtime; outputs as the runtime gives them."""
        ...

    def decode_outputs(self, artifact: Path, outputs: Feeds) -> Feeds:
        """The runtime's outputs -> ONNX-convention outputs (names, layout, float)."""
        ...

    def run(self, artifact: Path, feeds: Feeds) -> Feeds:
        """Run the artifact in the runtime that will execute it, ONNX convention in and out."""
        ...


def raise_for_issues(target: str, issues: list[Issue]) -> None:
    """Raise one :class:`UnsupportedOpError` that lists every fatal issue (``Issue.fatal``)."""
    issues = [i for i in issues if i.fatal]
    if issues:
        listed = "; ".join(str(i) for i in issues[:10])
        more = f"; and {len(issues) - 10} more" if len(issues) > 10 else ""
        raise UnsupportedOpError(
            f"target '{target}' cannot run {len(issues)} node(s): {listed}{more}"
        )

