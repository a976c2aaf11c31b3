"""The layer-dropping road: remove the residual blocks that matter least on data, with least-squares repair."""

from edgeopt.layers.drop import (
    DropConfig,
    DropFileResult,
    DropResult,
    calibration_batches,
    drop_layers,
    drop_layers_file,
    plan,
)

__all__ = [
    "DropConfig",
    "DropFileResult",
    "DropResult",
    "calibration_batches",
    "drop_layers",
    "drop_layers_file",
    "plan",
]
