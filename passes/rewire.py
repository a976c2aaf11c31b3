"""Helpers shared by passes that bypass or replace values."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

DEFAULT_DOMAINS = ("", "ai.onnx")


def is_default_domain(node: ir.Node) -> bool:
    return node.domain in DEFAULT_DOMAINS


def opset_version(model_or_graph: ir.Model | ir.Graph, domain: str = "") -> int | None:
    """The model's import of ``domain`` (``None`` when the model does not import it)."""
    graph = model_or_graph.graph if isinstance(model_or_graph, ir.Model) else model_or_graph
    imports = graph.opset_imports
    version = imports.get(domain)
    if version is None and domain == "":
        version = imports.get("ai.onnx")
    return version


def bypass(old: ir.Value, new: ir.Value) -> bool:
    """Make every use of ``old`` (graph-output slots included) use ``new`` instead.

    When ``old`` is a graph output, ``new`` takes over its name, so the graph's
    signature is unchanged; that is only possible when ``new`` is produced by a
    node of the same graph and is not itself a graph input, output or initializer.
    Returns False, changing nothing, when the bypass is impossible.
    """
    if old is new:
        return False
    if not old.is_graph_output():
        old.replace_all_uses_with(new)
        return True
    producer = new.producer()
    if (
        new.is_graph_input()
        or new.is_graph_output()
        or new.is_initializer()
        or producer is None
        or producer.graph is None
        or producer.graph is not old.graph
    ):
        return False
    name = old.name
    if new.type is None:
        new.type = old.type
    if old.shape is not None:
        new.shape = old.shape  # the output's declared shape is part of the signature
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    old.name = None
    new.name = name
    return True


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant array behind ``value``: an initializer that is not a graph input,
    or the output of a ``Constant`` node."""
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
        return None if tensor is None else tensor.numpy()
    except Exception:  # noqa: BLE001 - malformed Constant, unreadable external data
        return None

