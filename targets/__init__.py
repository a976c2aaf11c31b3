"""Per-target backends, listed explicitly (no import-time self-registration)."""

from __future__ import annotations

from edgeopt.targets.ort import OrtCpuTarget
from edgeopt.targets.ort_gpu import OrtGpuTarget
from edgeopt.targets.ort_int8 import OrtCpuInt8Target
from edgeopt.targets.ort_npu import OrtNpuTarget
from edgeopt.targets.tflite import TFLiteCpuInt8Target, TFLiteGpuTarget, TFLiteNpuTarget, TFLiteTarget

TARGETS = {cls.name: cls for cls in (OrtCpuTarget, OrtCpuInt8Target, OrtGpuTarget, OrtNpuTarget,
                                       TFLiteTarget, TFLiteCpuInt8Target, TFLiteGpuTarget, TFLiteNpuTarget)}

__all__ = ["TARGETS", "OrtCpuInt8Target", "OrtCpuTarget", "OrtGpuTarget", "OrtNpuTarget",
           "TFLiteCpuInt8Target", "TFLiteGpuTarget", "TFLiteNpuTarget", "TFLiteTarget"]
