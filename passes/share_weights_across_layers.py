"""Cross-layer weight sharing (ALBERT-style): near-identical weights share one initializer.

Weights of the same dtype and shape (repeated blocks of a transformer, a CNN's
repeated stages) are grouped greedily: each weight joins the first group whose
leader it is within ``tolerance`` of, in relative Frobenius norm
``||W - W_leader|| / ||W||``; the group then shares the mean of its members. The
error of each share, ``||W - W_shared|| / ||W||``, is checked against the tolerance
again and reported. ``deduplicate-initializers`` already merges exact copies; this
pass trades a bounded error for more sharing. On independently trained layers the
error of any share is near ``sqrt(2)``, so sharing needs weights trained to be alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)

_FLOATS = (np.float16, np.float32, np.float64)
SHARED_KEY = "edgeopt.shared_weights"
"""``model.metadata_props`` key listing the initializers that hold a group's shared tensor. They
take no further part: a later run would otherwise compare other weights with the group's mean,
not its members, and could share again with errors beyond the tolerance (not idempotent)."""


@dataclass(frozen=True)
class Share:
    """One weight replaced by the tensor its group shares."""

    name: str
    shared_with: str
    """The initializer that now holds the shared tensor (the group's leader)."""
    rel_error: float


def sharing_groups(
    weights: dict[str, np.ndarray], tolerance: float
) -> list[tuple[list[str], np.ndarray, list[float]]]:
    """Group ``weights`` (name -> array, in order) that can share one tensor.

    Returns ``(names, shared, errors)`` for every group of two or more, where each
    member's error ``||W - shared|| / ||W||`` is within ``tolerance``.
    """
    groups: list[list[str]] = []
    for name, array in weights.items():
        for group in groups:
            leader = weights[group[0]]
            if leader.shape == array.shape and leader.dtype == array.dtype \
                    and _rel(array, leader) <= tolerance:
                group.append(name)
                break
        else:
            groups.append([name])
    result = []
    for group in groups:
        while len(group) > 1:
            shared = np.mean([weights[n].astype(np.float64) for n in group], axis=0)
            errors = [_rel(weights[n], shared) for n in group]
            worst = int(np.argmax(errors))
            if errors[worst] <= tolerance:
                result.append((group, shared.astype(weights[group[0]].dtype), errors))
                break
            group = group[:worst] + group[worst + 1:]  # the mean drifted away from one member
    return result


def nearest_pairs(weights: dict[str, np.ndarray]) -> list[tuple[str, str, float]]:
    """For each weight, the closest other weight of its dtype and shape and their error."""
    pairs = []
    names = list(weights)
    for a in names:
        errors = [(b, _rel(weights[a], weights[b])) for b in names if b != a
                  and weights[b].shape == weights[a].shape and weights[b].dtype == weights[a].dtype]
        if errors:
            b, error = min(errors, key=lambda item: item[1])
            pairs.append((a, b, error))
    return pairs


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a64 = a.astype(np.float64)
    return float(np.linalg.norm(a64 - b) / max(float(np.linalg.norm(a64)), 1e-30))


def shareable_weights(graph: ir.Graph, min_elements: int) -> dict[str, np.ndarray]:
    """Float initializers of rank >= 2 that are not graph inputs or outputs, by name."""
    fixed = set(graph.inputs) | set(graph.outputs)
    weights = {}
    for name, value in graph.initializers.items():
        tensor = value.const_value
        if value in fixed or tensor is None or len(tensor.shape) < 2 or tensor.size < min_elements:
            continue
        array = tensor.numpy()
        if array.dtype.type in _FLOATS:
            weights[name] = array
    return weights


class ShareWeightsAcrossLayersPass(EdgeoptPass):
    """Make same-shape weights within ``tolerance`` of each other share one initializer.

    Only float initializers of rank >= 2 with at least ``min_elements`` elements
    that are not graph inputs or outputs take part; each graph (subgraphs
    included) on its own. The group's first initializer keeps its name and holds
    the mean; the others are removed. Shared tensors (listed in the model's
    ``edgeopt.shared_weights`` metadata) are left alone by later runs. ``last_report`` lists every share. With
    ``tolerance=0`` only exact copies are shared.

    Args:
        tolerance: Largest relative error ``||W - W_shared|| / ||W||`` of a share.
        min_elements: Skip smaller tensors.
    """

    name = "share-weights-across-layers"
    preserves_semantics = False

    def __init__(self, *, tolerance: float = 0.01, min_elements: int = 1024) -> None:
        super().__init__()
        if not 0 <= tolerance < 1:
            raise PassOptionError(f"share-weights-across-layers: tolerance must be in [0, 1), got {tolerance}.")
        self.tolerance = tolerance
        self.min_elements = min_elements
        self.last_report: list[Share] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.last_report = []
        done = set(filter(None, model.metadata_props.get(SHARED_KEY, "").split(",")))
        for graph in model.graphs():
            weights = {k: v for k, v in shareable_weights(graph, self.min_elements).items() if k not in done}
            for names, shared, errors in sharing_groups(weights, self.tolerance):
                done.add(names[0])
                keeper = graph.initializers[names[0]]
                keeper.const_value = ir.tensor(shared, name=keeper.name)
                for name, error in zip(names, errors, strict=True):
                    self.last_report.append(Share(name, names[0], error))
                    if name != names[0]:
                        graph.initializers[name].replace_all_uses_with(keeper)
                        del graph.initializers[name]
                    logger.debug("share-weights-across-layers: %s -> %s, rel error %.3g", name, names[0], error)
        merged = sum(1 for s in self.last_report if s.name != s.shared_with)
        if merged:
            model.metadata_props[SHARED_KEY] = ",".join(sorted(done))
        logger.info("share-weights-across-layers: %d weight(s) now share another's tensor", merged)
        return ir.passes.PassResult(model, modified=merged > 0)
