"""Per-target backends, listed explicitly (no import-time self-registration)."""

from __future__ import annotations

from edgeopt.targets.ort import OrtCpuTarget

TARGETS = {cls.name: cls for cls in (OrtCpuTarget,)}

__all__ = ["TARGETS", "OrtCpuTarget"]
