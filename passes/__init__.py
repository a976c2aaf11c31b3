"""Graph passes, listed explicitly (no import-time self-registration).

``PASSES`` maps each registry name to its pass class; ``PRESETS`` maps a preset
name to the passes it stands for, in order. Running passes by name (and a preset
as one pass, ``edgeopt.pipeline.cleanup()``) is :mod:`edgeopt.pipeline`'s job.
"""

from __future__ import annotations

import onnx_ir as ir

from edgeopt.passes.avoid_int8_saturation import AvoidInt8SaturationPass
from edgeopt.passes.clamp_mask_constants import ClampMaskConstantsPass
from edgeopt.passes.cluster_weights import ClusterWeightsPass
from edgeopt.passes.convert_fp16 import ConvertFloat16Pass
from edgeopt.passes.convert_opset import ConvertOpsetPass
from edgeopt.passes.correct_bias import CorrectBiasPass
from edgeopt.passes.decompose_erf import DecomposeErfPass
from edgeopt.passes.decompose_norms import DecomposeNormsPass
from edgeopt.passes.deduplicate_initializers import DeduplicateInitializersPass
from edgeopt.passes.distill import DistillPass
from edgeopt.passes.drop_layers import DropLayersPass
from edgeopt.passes.eliminate_identity import EliminateIdentityPass
from edgeopt.passes.eliminate_neutral import EliminateNeutralPass
from edgeopt.passes.equalize_cross_layer import EqualizeCrossLayerPass
from edgeopt.passes.factorize_low_rank import FactorizeLowRankPass
from edgeopt.passes.fix_static_shapes import FixStaticShapesPass
from edgeopt.passes.fold_affine import FoldAffinePass
from edgeopt.passes.fold_batchnorm import FoldBatchNormPass
from edgeopt.passes.fold_constants import FoldConstantsPass
from edgeopt.passes.infer_shapes import InferShapesPass
from edgeopt.passes.lift_constants import LiftConstantsPass
from edgeopt.passes.prune_channels import PruneChannelsPass
from edgeopt.passes.prune_magnitude import PruneMagnitudePass
from edgeopt.passes.quantize_dynamic import QuantizeDynamicPass
from edgeopt.passes.quantize_static import QuantizeStaticPass
from edgeopt.passes.quantize_weights import QuantizeWeightsPass
from edgeopt.passes.remove_unused import RemoveUnusedPass
from edgeopt.passes.round_weights import RoundWeightsPass
from edgeopt.passes.share_weights_across_layers import ShareWeightsAcrossLayersPass
from edgeopt.passes.simplify_patterns import SimplifyPatternsPass
from edgeopt.passes.smooth_quant import SmoothQuantPass
from edgeopt.passes.topological_sort import TopologicalSortPass

PASSES: dict[str, type[ir.passes.PassBase]] = {
    cls.name: cls
    for cls in (
        AvoidInt8SaturationPass,
        ClampMaskConstantsPass,
        ClusterWeightsPass,
        ConvertFloat16Pass,
        ConvertOpsetPass,
        CorrectBiasPass,
        DecomposeErfPass,
        DecomposeNormsPass,
        DeduplicateInitializersPass,
        DistillPass,
        DropLayersPass,
        EliminateIdentityPass,
        EliminateNeutralPass,
        EqualizeCrossLayerPass,
        FactorizeLowRankPass,
        FixStaticShapesPass,
        FoldAffinePass,
        FoldBatchNormPass,
        FoldConstantsPass,
        InferShapesPass,
        LiftConstantsPass,
        PruneChannelsPass,
        PruneMagnitudePass,
        QuantizeDynamicPass,
        QuantizeStaticPass,
        QuantizeWeightsPass,
        RemoveUnusedPass,
        RoundWeightsPass,
        ShareWeightsAcrossLayersPass,
        SimplifyPatternsPass,
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
        "eliminate-neutral",
        "fold-batchnorm",
        "fold-affine",
        "simplify-patterns",
        "remove-unused",
        "deduplicate-initializers",
    ),
}


__all__ = [
    "PASSES",
    "PRESETS",
    "AvoidInt8SaturationPass",
    "ClampMaskConstantsPass",
    "ClusterWeightsPass",
    "ConvertFloat16Pass",
    "ConvertOpsetPass",
    "CorrectBiasPass",
    "DecomposeErfPass",
    "DecomposeNormsPass",
    "DeduplicateInitializersPass",
    "DropLayersPass",
    "EliminateIdentityPass",
    "EliminateNeutralPass",
    "EqualizeCrossLayerPass",
    "FactorizeLowRankPass",
    "FixStaticShapesPass",
    "FoldAffinePass",
    "FoldBatchNormPass",
    "FoldConstantsPass",
    "InferShapesPass",
    "LiftConstantsPass",
    "PruneChannelsPass",
    "PruneMagnitudePass",
    "QuantizeDynamicPass",
    "QuantizeStaticPass",
    "QuantizeWeightsPass",
    "RemoveUnusedPass",
    "RoundWeightsPass",
    "ShareWeightsAcrossLayersPass",
    "SimplifyPatternsPass",
    "SmoothQuantPass",
    "TopologicalSortPass",
]
