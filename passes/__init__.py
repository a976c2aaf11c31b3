"""Graph passes, listed explicitly (no import-time self-registration).

``PASSES`` maps each registry name to its pass class; ``PRESETS`` maps a preset
name to the passes it stands for, in order.
"""

from __future__ import annotations

import onnx_ir as ir

from edgeopt.passes.convert_opset import ConvertOpsetPass
from edgeopt.passes.correct_bias import CorrectBiasPass
from edgeopt.passes.deduplicate_initializers import DeduplicateInitializersPass
from edgeopt.passes.eliminate_identity import EliminateIdentityPass
from edgeopt.passes.equalize_cross_layer import EqualizeCrossLayerPass
from edgeopt.passes.fold_batchnorm import FoldBatchNormPass
from edgeopt.passes.fold_constants import FoldConstantsPass
from edgeopt.passes.infer_shapes import InferShapesPass
from edgeopt.passes.lift_constants import LiftConstantsPass
from edgeopt.passes.quantize_dynamic import QuantizeDynamicPass
from edgeopt.passes.quantize_static import QuantizeStaticPass
from edgeopt.passes.quantize_weights import QuantizeWeightsPass
from edgeopt.passes.remove_unused import RemoveUnusedPass
from edgeopt.passes.smooth_quant import SmoothQuantPass
from edgeopt.passes.topological_sort import TopologicalSortPass

PASSES: dict[str, type[ir.passes.PassBase]] = {
    cls.name: cls
    for cls in (
        ConvertOpsetPass,
        CorrectBiasPass,
        DeduplicateInitializersPass,
        EliminateIdentityPass,
        EqualizeCrossLayerPass,
        FoldBatchNormPass,
        FoldConstantsPass,
        InferShapesPass,
        LiftConstantsPass,
        QuantizeDynamicPass,
        QuantizeStaticPass,
        QuantizeWeightsPass,
        RemoveUnusedPass,
        SmoothQuantPass,
        TopologicalSortPass,
    )
}

PRESETS: dict[str, tuple[str, ...]] = {
    "cleanup": (
        "topological-sort",
        "infer-shapes",
        "fold-constants",
        "lift-constants",
        "eliminate-identity",
        "fold-batchnorm",
        "remove-unused",
        "deduplicate-initializers",
    ),
}


def cleanup() -> ir.passes.PassBase:
    """The ``cleanup`` preset as one onnx-ir pass (repeated until nothing changes)."""
    from edgeopt.pipeline import PresetPass

    return PresetPass("cleanup")


__all__ = [
    "PASSES",
    "PRESETS",
    "ConvertOpsetPass",
    "CorrectBiasPass",
    "DeduplicateInitializersPass",
    "EliminateIdentityPass",
    "EqualizeCrossLayerPass",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "InferShapesPass",
    "LiftConstantsPass",
    "QuantizeDynamicPass",
    "QuantizeStaticPass",
    "QuantizeWeightsPass",
    "RemoveUnusedPass",
    "SmoothQuantPass",
    "TopologicalSortPass",
    "cleanup",
]
