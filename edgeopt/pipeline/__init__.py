"""Run registered passes by name: the registry of passes and presets with typed options, and the verifying pipeline."""

from edgeopt.pipeline.registry import PassInfo, expand, get_pass, list_pass_names, list_passes, list_presets
from edgeopt.pipeline.runner import Pipeline, PipelineResult, PresetPass, StepResult, StepSpec, cleanup, run_passes

__all__ = [
    "PassInfo",
    "Pipeline",
    "PipelineResult",
    "PresetPass",
    "StepResult",
    "StepSpec",
    "cleanup",
    "expand",
    "get_pass",
    "list_pass_names",
    "list_passes",
    "list_presets",
    "run_passes",
]
