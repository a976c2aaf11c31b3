"""The pruning road: structured channel and head pruning and magnitude pruning of a model file, with its report."""

from edgeopt.pruning.prune import PruneConfig, PruneResult, prune_file

__all__ = [
    "PruneConfig",
    "PruneResult",
    "prune_file",
]
