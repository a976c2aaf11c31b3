"""Helpers shared by the pruning passes."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def write_constant(value: ir.Value, array: np.ndarray) -> None:
    """Replace the data of a constant in place, keeping its name: an initializer or a
    ``Constant`` node's output. Every user sees the new data (callers check sharing)."""
    tensor = ir.tensor(array, name=value.name)
    producer = value.producer()
    if value.is_initializer() or producer is None:
        value.const_value = tensor
    else:
        assert producer.op_type == "Constant", f"'{value.name}' is not a constant"
        producer.attributes.clear()
        producer.attributes["value"] = ir.AttrTensor("value", tensor)
        value.const_value = None
    value.shape = ir.Shape(array.shape)
