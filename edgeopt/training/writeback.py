"""Write a trained :class:`~edgeopt.training.interpreter.OnnxModule`'s parameters back into its ONNX graph.

The graph edgeopt made stays exactly as it was (same nodes, names, signature and
opsets); only the float initializers get new values, in their original dtype. This is
simpler and safer than re-exporting the module, which would rebuild the graph from
torch ops (larger, with shape code) and lose edgeopt's clean-up.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgeopt.training.interpreter import OnnxModule

logger = logging.getLogger(__name__)

__all__ = ["write_back"]


def write_back(module: OnnxModule, model: ir.Model) -> int:
    """Copy every parameter of ``module`` into the same-named initializer of ``model``, in place.

    Args:
        module: The module built from ``model`` (or from a copy of it).
        model: The graph to update.

    Returns:
        How many initializers changed.
    """
    changed = 0
    for name, value in model.graph.initializers.items():
        param = module.parameter_of(name)
        if param is None or value.const_value is None:
            continue
        old = value.const_value.numpy()
        new = module.value_of(name).detach().cpu().numpy().astype(old.dtype).reshape(old.shape)
        if np.array_equal(old, new):
            continue
        value.const_value = ir.tensor(new, name=name)
        changed += 1
    logger.info("write-back: %d initializer(s) updated", changed)
    return changed
