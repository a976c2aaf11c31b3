"""The CPU family an int8 artifact is built for, and the host's, detected.

ONNX Runtime's x86 int8 kernels differ by instruction set. Without VNNI (AVX2, or
AVX-512 without VNNI) the u8 x s8 GEMM multiplies with ``VPMADDUBSW``, which sums
each pair of products into a *saturating* int16: with full-range int8 weights
(|w| up to 127) and large uint8 activations, ``255*127 + 255*127`` overflows and
the result is silently wrong (onnxruntime #5849, #6004, #12072). VNNI/AMX
(``VPDPBUSD``) and ARM64 (widening multiplies, SDOT/UDOT) accumulate in int32 and
do not saturate.

Families:

- ``x86-avx2``: x86-64 whose u8 x s8 kernels saturate (AVX2, AVX-512 without VNNI);
- ``x86-vnni``: x86-64 with VNNI or AMX (exact);
- ``arm64``: AArch64 (exact).

``detect_host_cpu`` decides the x86 family by running a one-node probe built to
saturate in ONNX Runtime: the kernels, not the flags, are what matter (an emulator
or hypervisor can report flags the kernels do not use). The flags found in
``/proc/cpuinfo`` are kept for the record.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np

from edgeopt.core.errors import PassOptionError

CpuFamily = Literal["x86-avx2", "x86-vnni", "arm64"]
CPU_FAMILIES: tuple[CpuFamily, ...] = ("x86-avx2", "x86-vnni", "arm64")
CPU_CHOICES = ("auto", *CPU_FAMILIES)
"""What ``--cpu`` takes: ``auto`` is the host."""

CPU_METADATA_KEY = "edgeopt.cpu"
"""Model metadata key: the CPU family an int8 model's weights are stored for."""

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""x86 flags of the instructions whose int8 dot products accumulate in int32."""


@dataclass(frozen=True)
class HostCpu:
    """What this machine's ONNX Runtime int8 kernels do."""

    family: CpuFamily
    machine: str  # platform.machine()
    flags: tuple[str, ...]  # the INT8_FLAGS /proc/cpuinfo lists (empty where unreadable)
    saturates: bool  # the probe's u8 x s8 product saturated

    def describe(self) -> str:
        flags = ", ".join(self.flags) or "none"
        kernels = "u8s8 kernels saturate" if self.saturates else "u8s8 kernels exact"
        return f"{self.family} ({self.machine}; int8 flags: {flags}; {kernels})"


def saturation_possible(family: str) -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels on ``family`` can overflow (only ``x86-avx2``)."""
    return family == "x86-avx2"


def resolve_cpu(cpu: str) -> CpuFamily:
    """``auto`` -> the host's family; a family name -> itself.

    Raises:
        PassOptionError: an unknown name.
    """
    if cpu == "auto":
        return detect_host_cpu().family
    if cpu not in CPU_FAMILIES:
        raise PassOptionError(f"unknown cpu '{cpu}'. Use one of: {', '.join(CPU_CHOICES)}.")
    return cast(CpuFamily, cpu)


@functools.lru_cache(maxsize=1)
def detect_host_cpu() -> HostCpu:
    """This machine's family: ARM64 by architecture; on x86, by whether the saturation probe saturates."""
    machine = platform.machine().lower()
    flags = _int8_flags()
    if machine in ("aarch64", "arm64"):
        return HostCpu("arm64", machine, flags, saturates=False)
    saturates = ort_u8s8_saturates()
    return HostCpu("x86-avx2" if saturates else "x86-vnni", machine, flags, saturates)


def _int8_flags() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ()
    found = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            found.update(line.split(":", 1)[-1].split())
    return tuple(flag for flag in INT8_FLAGS if flag in found)


@functools.lru_cache(maxsize=1)
def ort_u8s8_saturates() -> bool:
    """Run ``MatMulInteger`` on uint8 255s x int8 127s in ONNX Runtime: the exact sum of each
    pair, 64,770, does not fit an int16, so a saturating kernel returns less than the truth."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    depth = 64
    weight = numpy_helper.from_array(np.full((depth, 8), 127, np.int8), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "u8s8_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, depth])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [4, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"a": np.full((4, depth), 255, np.uint8)})
    return bool((result != 255 * 127 * depth).any())
