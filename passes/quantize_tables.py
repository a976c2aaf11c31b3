"""Lookup tables (a Gather's constant data: embeddings) as int8 codes with one scale per row.

ONNX Runtime's QDQ emitter gives a Gather's table one scale for the whole tensor. Embedding
tables have outlier columns, so a per-tensor range wastes most codes on a few values: on
all-MiniLM-L6-v2 the word embeddings keep 30.0 dB SQNR per tensor (uint8, asymmetric) and
42.8 dB with a symmetric int8 scale per row; position embeddings 20.4 -> 38.9 dB. A row is
what a Gather reads, so a per-row scale costs nothing at run time: ``DequantizeLinear``
with ``axis`` set to the Gather's axis.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

from edgeopt.core.rewire import Constants, value_names

MIN_TABLE_ELEMENTS = 16384
"""Smaller tables (token types, a handful of rows) stay float: nothing to gain in size."""


def gather_tables(model: ir.Model, *, min_elements: int = MIN_TABLE_ELEMENTS) -> list[str]:
    """Names of the Gather nodes whose data is a float initializer of at least ``min_elements``."""
    names = []
    for node in model.graph:
        table = node.inputs[0] if node.op_type == "Gather" and node.inputs else None
        if node.name and table is not None and _float_table(table) is not None \
                and table.const_value is not None and table.const_value.size >= min_elements:
            names.append(node.name)
    return names


def quantize_gather_tables(model: ir.Model, nodes: Iterable[str]) -> int:
    """Feed each Gather in ``nodes`` from ``DequantizeLinear(int8 codes, per-row scale)``; returns how many.

    Symmetric int8 codes (zero point 0, what NPUs take), the scale of a row its largest magnitude / 127.
    Gathers of one table along one axis share its codes. The float table is left for remove-unused
    when nothing else reads it.
    """
    wanted = set(nodes)
    constants = Constants(model.graph, value_names(model), as_nodes=False)
    made: dict[tuple[int, int], ir.Value] = {}
    done = 0
    for node in list(model.graph):
        if node.name not in wanted or node.op_type != "Gather":
            continue
        table = node.inputs[0]
        array = _float_table(table)
        if array is None or table is None or array.ndim == 0:
            continue
        axis = node.attributes.get_int("axis", 0) % array.ndim
        key = (id(table), axis)
        if key not in made:
            made[key] = _dequantized_rows(model, constants, table.name or node.name, array, axis, before=node)
        node.replace_input_with(0, made[key])
        done += 1
    return done


def _dequantized_rows(model: ir.Model, constants: Constants, base: str, array: np.ndarray, axis: int, *,
                      before: ir.Node) -> ir.Value:
    codes, scale = _per_row_int8(array, axis)
    inputs = [constants.add(f"{base}_rows_int8", codes), constants.add(f"{base}_rows_scale", scale),
              constants.add(f"{base}_rows_zero_point", np.zeros_like(codes, shape=scale.shape))]
    dequantize = ir.node("DequantizeLinear", inputs, attributes={"axis": axis}, name=f"{base}_rows_DequantizeLinear")
    output = dequantize.outputs[0]
    output.name = constants.add_name(f"{base}_rows_dequantized")
    output.dtype, output.shape = ir.DataType.from_numpy(array.dtype), ir.Shape(array.shape)
    model.graph.insert_before(before, dequantize)
    return output


def _per_row_int8(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    reduce = tuple(i for i in range(array.ndim) if i != axis)
    peak = np.abs(array.astype(np.float64)).max(axis=reduce) if reduce else np.abs(array.astype(np.float64))
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(array.dtype)  # DequantizeLinear returns the scale's type
    shape = [1] * array.ndim
    shape[axis] = -1
    codes = np.clip(np.round(array / scale.reshape(shape).astype(np.float64)), -127, 127).astype(np.int8)
    return codes, scale


def _float_table(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return None
    return value.const_value.numpy()
