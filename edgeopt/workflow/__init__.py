"""Whole runs from a file: optimize (passes, then targets) and YAML recipes with their compile section."""

from edgeopt.workflow.optimize import OptimizeResult, export_target, optimize_file, run_recipe
from edgeopt.workflow.recipe import Recipe, load_recipe

__all__ = [
    "OptimizeResult",
    "Recipe",
    "export_target",
    "load_recipe",
    "optimize_file",
    "run_recipe",
]
