"""Remove Identity nodes and inference-mode Dropout nodes."""

from __future__ import annotations

import logging

import onnx_ir as ir

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.core.rewire import bypass, const_array, is_default_domain, opset_version

logger = logging.getLogger(__name__)


class EliminateIdentityPass(EdgeoptPass):
    """Drop ``Identity`` and inference-mode ``Dropout``, which return their input.

    A Dropout goes only when it is provably in inference mode (opset >= 7, and
    ``training_mode`` absent or a constant false) and its mask output is unused.
    When the removed node produces a graph output, the producer of its input takes
    over the output's name, so the signature never changes; where that is impossible
    (the input is a graph input, an initializer or another output) the node stays.
    Subgraphs are visited; model-local functions are not.
    """

    name = "eliminate-identity"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = opset_version(model) or 0
        removed = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if not _is_passthrough(node, opset):
                continue
            source = node.inputs[0]
            assert source is not None
            if bypass(node.outputs[0], source):
                assert node.graph is not None
                node.graph.remove(node, safe=True)
                removed += 1
            else:
                logger.debug("eliminate-identity: kept %s (%s) feeding a graph output",
                             node.name, node.op_type)
        logger.info("eliminate-identity: removed %d node(s)", removed)
        return ir.passes.PassResult(model, modified=removed > 0)


def _is_passthrough(node: ir.Node, opset: int) -> bool:
    if not is_default_domain(node) or not node.inputs or node.inputs[0] is None:
        return False
    if node.op_type == "Identity":
        return len(node.outputs) == 1
    if node.op_type != "Dropout" or opset < 7:
        return False
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        training = const_array(node.inputs[2])
        return training is not None and not bool(training.any())
    return True
