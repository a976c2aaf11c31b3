"""The stages the search runs, in their fixed order, each declaring its road's searchable options.

The declarations live here rather than beside each road so that the roads stay
unaware of the search; each stage names the road's config class or function
(``road``), and a test checks that every searchable option is one of its keywords,
so a renamed option cannot leave a stale declaration behind.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.layers.drop import DropConfig, drop_layers_file, plan
from edgeopt.passes.cluster_weights import ClusteredTensor, ClusterWeightsPass
from edgeopt.passes.codebook import DECODE_KEY
from edgeopt.passes.convert_fp16 import ConvertFloat16Pass
from edgeopt.pipeline import cleanup
from edgeopt.pruning.prune import PruneConfig, prune_file
from edgeopt.quantization.quantize import QuantizeConfig, quantize_file
from edgeopt.search.space import Candidate, Context, Options, Searchable, Stage
from edgeopt.sharing.compress import low_rank_file
from edgeopt.training import DistillConfig


def _prune(src: Path, dst: Path, options: Options, context: Context) -> dict[str, Any]:
    config = PruneConfig(ratio=options["ratio"], criterion=options["criterion"], samples=context.samples,
                         eval_samples=min(64, context.samples))
    result = prune_file(src, dst, config, calibration=context.calibration)
    return {"channels": list(result.plan.channels) if result.plan else None}


def _drop_layers(src: Path, dst: Path, options: Options, context: Context) -> dict[str, Any]:
    result = drop_layers_file(src, dst, DropConfig(count=options["count"], samples=context.samples),
                              calibration=context.calibration)
    return {"dropped": list(result.result.dropped)}


def _low_rank(src: Path, dst: Path, options: Options, context: Context) -> dict[str, Any]:
    result = low_rank_file(src, dst, energy=options["energy"], calibration=context.calibration,
                           samples=min(64, context.samples))
    return {"factorized": len(result.changes)}


def cluster_weights_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, clusters: int,
                         channel_scale: bool = False, embedding_clusters: int = 0, data_aware: bool = False,
                         calibration: str | None = None, samples: int = 256) -> list[ClusteredTensor]:
    """Clean up, then k-means cluster the weights of ``src`` into ``dst`` (the ``share-weights`` stage).

    Args:
        clusters: Values per weight tensor of Conv, Gemm and MatMul (and of lookup tables, unless
            ``embedding_clusters`` is given).
        channel_scale: One codebook per tensor times a scale per output channel (CNNs).
        embedding_clusters: Values per constant Gather table (a transformer's word embeddings, often
            half its parameters), clustered on their own; 0: ``clusters``.
        data_aware: Choose each codebook for the layer's outputs on ``calibration`` (at most ``samples``
            of them), not for the weights alone (:mod:`edgeopt.passes.codebook_data`).
    """
    if data_aware and calibration is None:
        raise PassOptionError("share-weights: data_aware needs calibration data.")
    data = calibration if data_aware else None
    model = load_model(src)
    check_model(model)
    cleanup()(model)
    kinds = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather")
    passes = [ClusterWeightsPass(clusters=clusters, channel_scale=channel_scale,
                                 op_types=tuple(k for k in kinds if k != "Gather" or not embedding_clusters),
                                 calibration=data, samples=samples)]
    if embedding_clusters:
        passes.append(ClusterWeightsPass(clusters=embedding_clusters, op_types=("Gather",), calibration=data,
                                         samples=samples))
    for pass_ in passes:
        pass_(model)
    save_model(model, dst)
    return [row for pass_ in passes for row in pass_.last_report]


def _share_weights(src: Path, dst: Path, options: Options, context: Context) -> dict[str, Any]:
    rows = cluster_weights_file(src, dst, **options, calibration=context.calibration, samples=context.samples)
    return {"clustered": len(rows)}


def _distill(src: Path, dst: Path, options: Options, context: Context) -> dict[str, Any]:
    from edgeopt.training import distill_file

    assert context.original is not None, "the evaluator passes the search's input model as the teacher"
    config = DistillConfig(time_limit=float(options["time_limit"]), lr=float(options.get("lr", 1e-4)))
    result = distill_file(src, context.original, context.calibration, dst, config)
    return {"before": result.before.metric, "after": result.after.metric, "steps": result.steps}


def _refuse_distill(candidate: Candidate) -> str | None:
    """Distillation needs a student that differs from its teacher: a compression stage before it."""
    names = [name for name, _ in candidate]
    if names.index("distill") == 0:
        return ("distill with no compression stage before it: the student would be the teacher (the search's "
                "input model); train after prune, drop-layers, low-rank or share-weights.")
    return None


def float16_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, precision: str = "float16") -> None:
    """Clean up, then store the weights and compute in float16, graph inputs and outputs float32 (the
    ``float16`` stage: :class:`~edgeopt.passes.convert_fp16.ConvertFloat16Pass`, fragile ops kept float32)."""
    if precision != "float16":
        raise PassOptionError(f"float16: precision must be 'float16', got {precision!r}.")
    model = load_model(src)
    check_model(model)
    cleanup()(model)
    ConvertFloat16Pass()(model)
    save_model(model, dst)


def _refuse_float16(candidate: Candidate) -> str | None:
    """float16 after static quantization: nothing to gain (on the digits CNN the QDQ model converted is larger,
    24.3 -> 31.7 KB, and twice as slow in ORT, p50 0.016 -> 0.030 ms)."""
    modes = [options.get("mode") for name, options in candidate if name == "quantize"]
    if "static" in modes:
        return ("float16 after static quantization: the weights and activations are int8 already; float16 would "
                "only cast the dequantized values (Casts between each DequantizeLinear and its op, so ORT could "
                "no longer fuse them into int8 kernels: slower and larger). Use one of the two.")
    return None


def _float16(src: Path, dst: Path, options: Options, context: Context) -> dict[str, Any]:
    float16_file(src, dst, **options)
    return {}


def _quantize(src: Path, dst: Path, options: Options, context: Context) -> dict[str, Any]:
    config = QuantizeConfig(mode=options["mode"], per_channel=options.get("per_channel", True),
                            budget=options.get("budget", 0.0), bits=options.get("bits", 4),
                            embedding_bits=options.get("embedding_bits", 0), samples=context.samples,
                            eval_samples=min(64, context.samples))
    calibration = context.calibration if options["mode"] == "static" else None
    if calibration is not None and _decodes_weights(load_model(src)):
        raise PassOptionError("quantize static after share-weights: each clustered weight is decoded at run time, "
                              "so calibration would observe every decoded weight as an activation (MiniLM-L6: "
                              "14 GB, killed); cluster without static quantization, or quantize alone.")
    result = quantize_file(src, dst, config, calibration=calibration)
    if result.after.weight_bytes == result.before.weight_bytes:  # weight-only on a CNN: no MatMul, no table
        raise PassOptionError(f"quantize {config.mode}: no weight of this model was quantized, so the candidate "
                              "is the model before it; use static or dynamic mode.")
    return {"agreement": result.score}


def _decodes_weights(model: ir.Model) -> bool:
    """Whether ``model`` holds codebook decode chains (the share-weights stage's clustered weights)."""
    return any(DECODE_KEY in node.metadata_props for node in ir.traversal.RecursiveGraphIterator(model.graph))


def _fit_drop_count(stage: Stage, model: ir.Model) -> Stage | None:
    """Drop 0 to N-1 of the model's N droppable layers; no stage when fewer than two can go."""
    droppable = sum(block.droppable for block in plan(model))
    if droppable < 2:
        return None
    return stage.with_switch(replace(stage.switch, high=droppable - 1))


def _fit_quantize_modes(stage: Stage, model: ir.Model) -> Stage:
    """Weight-only quantization stores MatMul weights and lookup tables in fewer bits; a model with
    neither (a CNN: Conv and Gemm) has nothing for it, so the mode is left out of its space."""
    if any(node.op_type in ("MatMul", "Gather") for node in ir.traversal.RecursiveGraphIterator(model.graph)):
        return stage
    switch = replace(stage.switch, choices=tuple(c for c in stage.switch.choices if c != "weight-only"))
    seeds = tuple(seed for seed in stage.more_seeds if seed.get("mode") != "weight-only")
    return replace(stage.with_switch(switch), more_seeds=seeds)


_STATIC_INT8 = {"quantize": {"mode": "static", "per_channel": True, "budget": 0.0}}
_WEIGHT_ONLY_INT8 = {"quantize": {"mode": "weight-only", "bits": 8, "embedding_bits": 8}}

STAGES: tuple[Stage, ...] = (
    Stage("prune", Searchable("criterion", "choice", choices=("off", "l1", "reconstruction")), off="off",
          run=_prune, road=PruneConfig, options=(Searchable("ratio", "float", 0.05, 0.5),),
          seed={"criterion": "reconstruction", "ratio": 0.3}),
    Stage("drop-layers", Searchable("count", "int", 0, 1), off=0, run=_drop_layers, road=DropConfig,
          seed={"count": 1}, adapt=_fit_drop_count),
    Stage("low-rank", Searchable("energy", "choice", choices=("off", 0.8, 0.9, 0.95, 0.99)), off="off",
          run=_low_rank, road=low_rank_file, seed={"energy": 0.95}),
    Stage("share-weights", Searchable("clusters", "choice", choices=("off", 8, 16, 32, 64, 128, 256)), off="off",
          run=_share_weights, road=cluster_weights_file, keeps_macs=True,
          options=(Searchable("channel_scale", "choice", choices=(False, True)),
                   Searchable("embedding_clusters", "choice", choices=(0, 8, 16, 32)),
                   Searchable("data_aware", "choice", choices=(False, True))),
          seed={"clusters": 64, "channel_scale": False, "embedding_clusters": 0, "data_aware": True},
          more_seeds=({"clusters": 16, "channel_scale": False, "embedding_clusters": 0, "data_aware": True},
                      {"clusters": 256, "channel_scale": True, "embedding_clusters": 0, "data_aware": False})),
    Stage("distill", Searchable("time_limit", "choice", choices=("off", 300, 600)), off="off", run=_distill,
          road=DistillConfig, options=(Searchable("lr", "choice", choices=(5e-5, 1e-4, 3e-4)),),
          refuse=_refuse_distill, recovers=True, keeps_macs=True,
          combo_seeds=(_STATIC_INT8 | {"drop-layers": {"count": 2}, "distill": {"time_limit": 600, "lr": 5e-5}},
                       # MiniLM-L6 (seq 32, AVX-512 CPU): cosine 0.9931, p50 2.80 ms against weight-only int8
                       # alone 4.15 ms, side by side (static int8 alone 4.96 ms, float 3.65 ms)
                       _WEIGHT_ONLY_INT8 | {"drop-layers": {"count": 2}, "distill": {"time_limit": 600, "lr": 1e-4}},
                       _STATIC_INT8 | {"drop-layers": {"count": 1}, "distill": {"time_limit": 300, "lr": 5e-5}},
                       {"share-weights": {"clusters": 8, "channel_scale": False, "embedding_clusters": 0,
                                          "data_aware": True}, "distill": {"time_limit": 600, "lr": 3e-4}},
                       _STATIC_INT8 | {"prune": {"criterion": "reconstruction", "ratio": 0.1},
                                       "distill": {"time_limit": 600, "lr": 1e-4}})),
    Stage("quantize", Searchable("mode", "choice", choices=("off", "dynamic", "static", "weight-only")),
          off="off", run=_quantize, road=QuantizeConfig, keeps_macs=True,
          options=(Searchable("per_channel", "choice", choices=(True, False), when=("dynamic", "static")),
                   Searchable("budget", "float", 0.0, 0.3, when=("static",)),
                   Searchable("bits", "choice", choices=(4, 8), when=("weight-only",)),
                   Searchable("embedding_bits", "choice", choices=(0, 4, 8), when=("weight-only",))),
          seed={"mode": "static", "per_channel": True, "budget": 0.0},
          more_seeds=({"mode": "weight-only", "bits": 8, "embedding_bits": 8},), adapt=_fit_quantize_modes),
    Stage("float16", Searchable("precision", "choice", choices=("off", "float16")), off="off", run=_float16,
          road=float16_file, keeps_macs=True, seed={"precision": "float16"}, refuse=_refuse_float16),
)
"""Every stage, in the order a candidate runs them: prune -> drop-layers -> low-rank -> share-weights -> distill ->
quantize -> float16."""

STAGE_NAMES = tuple(stage.name for stage in STAGES)
