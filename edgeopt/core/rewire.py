"""Graph-editing helpers shared by passes and engines: bypass values, read and write constants."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

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


@dataclass
class Constants:
    """Adds constants to ``graph`` under names no value of the model uses yet:
    initializers, or ``Constant`` nodes at the start of the graph when ``as_nodes``."""

    graph: ir.Graph
    taken: set[str]
    as_nodes: bool

    def add_name(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``, ... : the first one nobody uses yet (now taken)."""
        unique, n = name, 0
        while unique in self.taken:
            n += 1
            unique = f"{name}_{n}"
        self.taken.add(unique)
        return unique

    def add(self, name: str, array: np.ndarray) -> ir.Value:
        unique = self.add_name(name)
        tensor = ir.tensor(array, name=unique)
        value = ir.Value(name=unique, const_value=tensor)
        value.shape = ir.Shape(array.shape)
        value.dtype = ir.DataType.from_numpy(array.dtype)
        if not self.as_nodes:
            self.graph.register_initializer(value)
            return value
        node = ir.Node("", "Constant", inputs=(), outputs=[value],
                       attributes=[ir.AttrTensor("value", tensor)])
        self.graph.insert_before(self.graph.node(0), node)  # the layer is there: not empty
        return value


def producers_within(node: ir.Node | None, within: Collection[ir.Node]) -> set[ir.Node]:
    """``node`` and every node upstream of it, walking only through nodes in ``within``."""
    found: set[ir.Node] = set()
    pending = [node]
    while pending:
        current = pending.pop()
        if current is None or current in found or current not in within:
            continue
        found.add(current)
        pending.extend(v.producer() for v in current.inputs if v is not None)
    return found


def value_names(model: ir.Model) -> set[str]:
    """Every value name in the model's graphs (to pick names nobody uses yet)."""
    names: set[str] = set()
    for graph in model.graphs():
        names.update(v.name for v in graph.inputs if v.name)
        names.update(graph.initializers)
        names.update(v.name for node in graph for v in node.outputs if v.name)
    return names


def rewrite_matching(
    model: ir.Model,
    matches: Callable[[ir.Node], bool],
    rewrite: Callable[[ir.Node, Constants, set[str]], None],
) -> int:
    """Call ``rewrite(node, constants, node_names)`` on every matching node, subgraphs included.

    ``constants`` adds new constants to the node's graph under unused names;
    ``node_names`` holds the node names taken so far. Returns how many nodes matched.
    """
    taken = value_names(model)
    node_names = {n.name for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.name}
    count = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if matches(node):
            assert node.graph is not None
            rewrite(node, Constants(node.graph, taken, model.ir_version < 4), node_names)
            count += 1
    return count


class ConstantWriter:
    """Gives nodes new constant inputs.

    A constant only this input uses (an initializer, or a ``Constant`` node's output)
    is rewritten in place and keeps its name. Otherwise a new constant is added under
    an unused name: an initializer, or a ``Constant`` node when IR < 4; the old one
    is left for ``remove-unused`` when nothing else uses it.
    """

    def __init__(self, model: ir.Model) -> None:
        self._taken = value_names(model)
        self._as_nodes = model.ir_version < 4

    def set(self, node: ir.Node, index: int, array: np.ndarray, suffix: str) -> None:
        old = node.inputs[index] if index < len(node.inputs) else None
        if old is not None and len(old.uses()) == 1 and not old.is_graph_output() and not old.is_graph_input():
            if old.is_initializer():
                old.const_value = ir.tensor(array, name=old.name)
                old.shape = ir.Shape(array.shape)
                return
            producer = old.producer()
            if producer is not None and producer.op_type == "Constant" and len(producer.outputs) == 1:
                producer.attributes.clear()
                producer.attributes["value"] = ir.AttrTensor("value", ir.tensor(array, name=old.name))
                old.shape = ir.Shape(array.shape)
                return
        assert node.graph is not None
        base = old.name if old is not None and old.name else f"{node.name or node.op_type}_{index}"
        value = self.new(node.graph, f"{base}_{suffix}", array)
        if index >= len(node.inputs):
            node.resize_inputs(index + 1)
        node.replace_input_with(index, value)

    def new(self, graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
        """A new constant in ``graph`` named ``name`` or, when taken, ``name_N``."""
        return Constants(graph, self._taken, self._as_nodes).add(name, array)
