"""The one exception hierarchy of edgeopt.

Every error a user can cause is an :class:`EdgeoptError`; the CLI prints its
message on one line and exits 1. A message says what failed, where, and what to
do about it.
"""

from __future__ import annotations


class EdgeoptError(Exception):
    """Base class of every error edgeopt raises for bad input or a failed check."""


class ModelLoadError(EdgeoptError):
    """A model file is missing, corrupt, or points at external data it must not read."""


class ModelSaveError(EdgeoptError):
    """An output could not be written, or writing it would overwrite the input model."""


class UnsupportedOpsetError(EdgeoptError):
    """The model's opset is outside the range a pass or target supports."""


class UnsupportedOpError(EdgeoptError):
    """The model uses an operator (or domain) that a pass or target cannot handle."""


class NonFiniteWeightsError(EdgeoptError):
    """A weight of the model holds NaN or infinite values."""


class CalibrationDataError(EdgeoptError):
    """Sample/calibration data does not match the model's inputs."""


class BackendNotInstalledError(EdgeoptError):
    """An optional backend (TFLite, ...) is needed but not installed."""


class PassOptionError(EdgeoptError):
    """An unknown pass name, or a pass option with an unknown name or a wrong type."""


class RecipeError(EdgeoptError):
    """A recipe file is missing, unparsable, or has an unknown or ill-typed key."""


class ExportError(EdgeoptError):
    """Exporting a framework model to ONNX failed or gave numerically different outputs."""


class VerificationError(EdgeoptError):
    """A pass that must preserve semantics changed the model's outputs beyond tolerance."""


class ConversionError(EdgeoptError):
    """Converting an ONNX model to another runtime's format (TFLite, ...) failed."""


class DeviceError(EdgeoptError):
    """A device could not be reached, or running a bundle on it failed."""
