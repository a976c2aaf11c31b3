"""ONNX graph -> trainable ``torch.nn.Module``: an interpreter that runs the graph's nodes in torch.

Hand-written rather than onnx2torch (see docs/distillation.md for the numbers): it
needs no torchvision, makes every float initializer a parameter, reads the opset 18+
forms edgeopt writes (``Reshape allowzero``, axes as inputs) and runs QDQ as fake
quantization. The module keeps the graph itself, so trained values go back into the
same nodes (:func:`edgeopt.training.writeback.write_back`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from edgeopt.core.errors import UnsupportedOpError
from edgeopt.training import shape_ops  # noqa: F401 - registers the shape and QDQ ops in OPS
from edgeopt.training.ops import OPS

logger = logging.getLogger(__name__)

__all__ = ["OnnxModule", "Positive", "supported_ops", "torch_dtype"]

Positive = Literal["log", "pow2"]
"""How a positive weight (a quantization scale) trains: its natural log, or its base-2 log rounded to an
integer in the forward pass (straight-through), so the value stays a power of two."""


def supported_ops() -> list[str]:
    """The op types (default domain) the interpreter runs."""
    return sorted({*OPS, "Constant"})


def torch_dtype(dtype: ir.DataType | int) -> torch.dtype:
    """The torch dtype of an ONNX element type."""
    return torch.from_numpy(np.zeros(0, ir.DataType(dtype).numpy())).dtype


class OnnxModule(nn.Module):
    """Runs an ``ir.Model``'s main graph in torch; float initializers are trainable parameters.

    Integer and bool initializers (shapes, indices, quantized weights), the scales of
    QuantizeLinear/DequantizeLinear, BatchNorm statistics and Constant nodes are buffers. ``forward`` takes
    the graph inputs in order (tensors) and returns the graph outputs as a tuple;
    :meth:`run` does the same with dicts.

    Nodes whose inputs are all buffers (a codebook's index decoding, shape arithmetic on
    constants) run once here and their outputs become buffers.

    Args:
        model: The model; its graph is read, never changed.
        trainable: Whether the float initializers require gradients.
        positive: Initializers that must stay positive (scales): trained as the log of a factor on
            the start value, so a scale can never reach 0 or change sign. This makes Q/DQ scales
            trainable.
        frozen: More float initializers to keep fixed (buffers).
        tied: Float initializers whose equal values stay equal (clustered weights): the parameter
            holds the distinct values and a buffer which one each element takes, so training
            moves centroids (each one gets the summed gradient of its cluster) and the tensor keeps
            exactly as many distinct values.

    Raises:
        UnsupportedOpError: one line listing every node whose op has no implementation here.
    """

    def __init__(self, model: ir.Model, *, trainable: bool = True, positive: Mapping[str, Positive] | None = None,
                 frozen: Collection[str] = (), tied: Collection[str] = ()) -> None:
        super().__init__()
        self.positive = dict(positive or {})
        self.tied: dict[str, str] = {}  # initializer name -> buffer key of its cluster index
        graph = model.graph
        _check_supported(graph)
        self.input_names = [v.name or "" for v in graph.inputs if not v.is_initializer()]  # IR < 4 lists both
        self.output_names = [v.name or "" for v in graph.outputs]
        self.weights = nn.ParameterDict()
        self.keys: dict[str, str] = {}  # ONNX initializer name -> key in weights / buffers
        self._consts: dict[str, str] = {}
        fixed = (_fixed_floats(graph) | set(frozen)) - set(self.positive)
        for name, value in graph.initializers.items():
            if value.const_value is None:
                continue
            array = value.const_value.numpy()
            key = _key(name, len(self.keys))
            self.keys[name] = key
            if name in self.positive:  # trains a log-factor of the start value (exp(0) keeps it exact)
                start = np.log2(array) if self.positive[name] == "pow2" else array
                self.register_buffer(f"{key}_start", torch.from_numpy(np.array(start)), persistent=False)
                zeros = torch.zeros(array.shape, dtype=torch.from_numpy(np.array(array)).dtype)
                self.weights[key] = nn.Parameter(zeros, requires_grad=trainable)
            elif name in tied and array.dtype.kind == "f":
                values, index = np.unique(array, return_inverse=True)
                self.weights[key] = nn.Parameter(torch.from_numpy(values), requires_grad=trainable)
                self.tied[name] = f"{key}_index"
                self.register_buffer(self.tied[name], torch.from_numpy(index.reshape(array.shape)), persistent=False)
            elif array.dtype.kind == "f" and name not in fixed:
                self.weights[key] = nn.Parameter(torch.from_numpy(array.copy()), requires_grad=trainable)
            else:
                self.register_buffer(key, torch.from_numpy(np.array(array)), persistent=False)
        self._nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        for node in graph:
            outputs = [v.name or "" for v in node.outputs]
            if node.op_type == "Constant":
                self._add_constant(node, outputs[0])
                continue
            inputs = [v.name or "" if v is not None else "" for v in node.inputs]
            self._nodes.append((node.op_type, inputs, outputs, _attributes(node)))
        self._precompute()

    def _precompute(self) -> None:
        """Run the nodes that read only buffers once; keep the outputs later nodes read as buffers."""
        known: dict[str, Any] = {n: getattr(self, k) for n, k in self.keys.items() if k not in self.weights}
        known |= {n: getattr(self, k) for n, k in self._consts.items()}
        remaining = []
        with torch.no_grad():
            for op, names, outputs, attrs in self._nodes:
                if all(not n or n in known for n in names) and op not in ("RandomNormal", "RandomUniform"):
                    args = [known[n] if n else None for n in names]
                    known.update(zip(outputs, OPS[op](args, attrs), strict=False))
                else:
                    remaining.append((op, names, outputs, attrs))
        needed = {n for _, names, _, _ in remaining for n in names} | set(self.output_names)
        computed = {o for _, _, outputs, _ in self._nodes for o in outputs} - {o for r in remaining for o in r[2]}
        for name in sorted(computed & needed):
            key = _key(name, len(self.keys) + len(self._consts))
            self._consts[name] = key
            self.register_buffer(key, known[name], persistent=False)
        self._nodes = remaining

    def _add_constant(self, node: ir.Node, output: str) -> None:
        attr = next(iter(node.attributes.values()))
        if attr.name in ("value", "sparse_value"):
            array = np.array(attr.value.numpy())
        else:  # value_float(s), value_int(s)
            array = np.array(attr.value, np.float32 if "float" in attr.name else np.int64)
        key = _key(output, len(self.keys) + len(self._consts))
        self._consts[output] = key
        self.register_buffer(key, torch.from_numpy(array), persistent=False)

    def parameter_of(self, name: str) -> nn.Parameter | None:
        """The parameter that holds initializer ``name`` (None when it is not a float initializer).

        For a ``positive`` initializer this is the log of its factor, for a ``tied`` one its distinct
        values; :meth:`value_of` gives the value.
        """
        key = self.keys.get(name)
        return self.weights[key] if key is not None and key in self.weights else None

    def value_of(self, name: str) -> torch.Tensor:
        """The current value of initializer ``name`` as the graph sees it."""
        key = self.keys[name]
        if key not in self.weights:
            return getattr(self, key)
        param = self.weights[key]
        if name in self.tied:
            return param[getattr(self, self.tied[name])]
        mode = self.positive.get(name)
        if mode is None:
            return param
        start = getattr(self, f"{key}_start")
        if mode == "log":
            return start * torch.exp(param)
        exponent = start + param
        return torch.exp2(exponent + (torch.round(exponent) - exponent).detach())

    def run(self, feeds: dict[str, torch.Tensor], extra: Sequence[str] = ()) -> dict[str, torch.Tensor]:
        """Graph outputs by name for inputs by name, and the intermediate tensors named in ``extra``."""
        env = self._run(tuple(feeds[n] for n in self.input_names))
        return {n: env[n] for n in (*self.output_names, *extra)}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = self._run(inputs)
        return tuple(env[n] for n in self.output_names)

    @property
    def nodes(self) -> list[tuple[str, list[str], list[str]]]:
        """The nodes that run on every call, in order: (op type, input names, output names)."""
        return [(op, names, outputs) for op, names, outputs, _ in self._nodes]

    def run_nodes(self, values: Mapping[str, torch.Tensor], start: int, stop: int) -> dict[str, Any]:
        """Run :attr:`nodes` ``[start:stop]`` on ``values`` (the tensors they read from earlier nodes or
        the graph inputs); return every value known afterwards by name (a block of the graph on its own)."""
        env = self._weights_env()
        env.update(values)
        return self._run_nodes(env, self._nodes[start:stop])

    def _weights_env(self) -> dict[str, Any]:
        env: dict[str, Any] = {}
        for name, key in self.keys.items():
            env[name] = self.value_of(name) if name in self.positive or name in self.tied else (
                self.weights[key] if key in self.weights else getattr(self, key))
        for name, key in self._consts.items():
            env[name] = getattr(self, key)
        return env

    def _run(self, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
        env = self._weights_env()
        env.update(zip(self.input_names, inputs, strict=True))
        return self._run_nodes(env, self._nodes)

    @staticmethod
    def _run_nodes(env: dict[str, Any], nodes: Sequence[tuple[str, list[str], list[str], dict[str, Any]]]
                   ) -> dict[str, Any]:
        for op, names, outputs, attrs in nodes:
            args = [env[n] if n else None for n in names]
            try:
                results = OPS[op](args, attrs)
            except Exception as e:
                raise RuntimeError(f"{op} node '{attrs['_name']}' failed in torch: {e}") from e
            env.update(zip(outputs, results, strict=False))
        return env


def _check_supported(graph: ir.Graph) -> None:
    missing = [f"'{node.name}' ({node.domain or 'ai.onnx'}::{node.op_type})" for node in graph
               if node.domain not in ("", "ai.onnx") or node.op_type not in OPS and node.op_type != "Constant"
               or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values())
               or "block_size" in node.attributes]  # blocked (weight-only int4) Q/DQ
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UnsupportedOpError(
            f"{graph.name or 'graph'}: node {shown} has no torch implementation for training (subgraphs, "
            "custom domains and blocked weight-only quantization are not run either). Run it through "
            "`edgeopt optimize --passes cleanup`, or report the op."
        )


def _fixed_floats(graph: ir.Graph) -> set[str]:
    """Float initializers that stay fixed: Q/DQ scales (QAT will own them), Clip bounds (ReLU6 stays ReLU6;
    trainable bounds made its forward and backward 6x slower) and BatchNorm statistics."""
    fixed = {v.name or "" for node in graph if node.op_type in ("QuantizeLinear", "DequantizeLinear")
             for v in node.inputs[1:] if v is not None}
    fixed |= {v.name or "" for node in graph if node.op_type == "Clip" for v in node.inputs[1:] if v is not None}
    return fixed | {v.name or "" for node in graph if node.op_type == "BatchNormalization"
                    for v in node.inputs[3:5] if v is not None}


def _attributes(node: ir.Node) -> dict[str, Any]:
    attrs: dict[str, Any] = {"_op": node.op_type, "_name": node.name or "", "_outputs": len(node.outputs),
                             "_dtype": torch_dtype}
    for name, attr in node.attributes.items():
        value = attr.value
        if attr.type == ir.AttributeType.TENSOR:
            value = np.array(value.numpy())
        elif isinstance(value, tuple | list):
            value = list(value)
        attrs[name] = value
    return attrs


def _key(name: str, index: int) -> str:
    return f"w{index}_{re.sub(r'[^0-9A-Za-z_]', '_', name)[:40]}"
