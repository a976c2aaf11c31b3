"""Evaluate nodes whose inputs are all constants, with onnxscript's folder, guarded.

onnxscript's folder also rewrites some ops into simpler ones (``ConcatFromSequence``
into ``Unsqueeze``, ``SplitToSequence`` into ``Split``), always in their newest
form: on an opset-12 model that yields an ``Unsqueeze`` with an ``axes`` input,
which opset 12 does not have. This wrapper keeps a replacement only when every
new node is valid at the model's opset (input count and attributes per the
ONNX schema), and treats a folder error on one node as "leave that node alone"
instead of failing the whole pass.

Models with IR < 4 must list every initializer as a graph input too, which would
change the signature (and make the folded value overridable), so there folded
values become ``Constant`` nodes instead of initializers, and a fold whose result
no ``Constant`` of the model's opset can hold (an int64 before opset 9) is refused.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
from onnxscript.optimizer import _constant_folding

from edgeopt.core.pass_base import EdgeoptPass
from edgeopt.passes.codebook import DECODE_KEY

logger = logging.getLogger(__name__)


class FoldConstantsPass(EdgeoptPass):
    """Replace constant subexpressions by constants (onnxscript's constant folder).

    Folding is limited by tensor size (1 MB of float32 in and out per node) so that
    a small expression never turns into a large stored tensor, and a Cast that
    widens a stored tensor of more than 8,192 elements is left to run time (an fp16
    model stays fp16). ``ConstantOfShape`` is folded too: shape arithmetic and
    attention masks of exported models start there. The folder skips random ops and nodes fed by graph
    inputs (IR < 4 initializers listed as inputs stay overridable), and keeps
    graph output names. With IR < 4, where every initializer must also be a graph
    input, folded values are stored in ``Constant`` nodes instead. Besides folding
    it simplifies: an ``If`` whose condition is constant is replaced by its
    branch, and inference-mode Dropout becomes Identity. Rewrites invalid at the
    model's opset are refused. Subgraphs and model functions are visited.

    Args:
        input_size_limit: Largest input (elements) a folded node may read.
        output_size_limit: Largest output (elements) a folded node may create.
    """

    name = "fold-constants"

    def __init__(self, *, input_size_limit: int = 262144, output_size_limit: int = 262144) -> None:
        super().__init__()
        self.input_size_limit = input_size_limit
        self.output_size_limit = output_size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folder = _GuardedFolder(
            input_size_limit=self.input_size_limit,
            output_size_limit=self.output_size_limit,
            constant_nodes=model.ir_version < 4,
        )
        result = folder(model)
        logger.info("fold-constants: %s", "folded" if result.modified else "nothing to fold")
        return ir.passes.PassResult(model, modified=result.modified)


class _GuardedFolder(_constant_folding.FoldConstantsPass):
    """onnxscript's folder, refusing rewrites invalid at the model's opset.

    With ``constant_nodes`` it folds graphs as it folds functions: into ``Constant``
    nodes in place of the folded node, never into initializers.
    """

    def __init__(
        self, *, input_size_limit: int, output_size_limit: int, constant_nodes: bool
    ) -> None:
        super().__init__(shape_inference=True, input_size_limit=input_size_limit,
                         output_size_limit=output_size_limit, should_fold=_should_fold)
        self.constant_nodes = constant_nodes

    def process_node(
        self, node: ir.Node, is_function: bool
    ) -> _constant_folding.Replacement | None:
        try:
            replacement = super().process_node(node, is_function or self.constant_nodes)
        except RuntimeError as e:  # the folder wraps an evaluator's failure on this node
            logger.debug("fold-constants: left %s (%s) alone: %s", node.name, node.op_type, e)
            return None
        if replacement is None:
            return None
        for new in replacement.new_nodes:
            problem = _invalid_at_opset(new, self._opset_imports)
            if problem:
                logger.debug("fold-constants: refused rewriting %s (%s): %s",
                             node.name, node.op_type, problem)
                return None
        return replacement


def _should_fold(node: ir.Node) -> bool | None:
    """Fold ``ConstantOfShape`` too (onnxscript keeps it by default: window-attention
    masks and padding arithmetic start there; the output size limit still bounds what
    it may create), never a codebook's decode chain (that would store dense weights)."""
    if DECODE_KEY in node.metadata_props or _widens_a_stored_tensor(node):
        return False
    return True if node.op_type == "ConstantOfShape" and node.domain in ("", "ai.onnx") else None


def _widens_a_stored_tensor(node: ir.Node) -> bool:
    """A ``Cast`` to a wider type of more than ``_WIDEN_LIMIT`` elements (fp16 weights cast to
    fp32 at run time): folding it would store the wide copy and grow the file."""
    if node.op_type != "Cast" or not node.inputs or node.inputs[0] is None:
        return False
    source = node.inputs[0].const_value
    target = node.attributes.get("to")
    if source is None or target is None or source.size <= _WIDEN_LIMIT:
        return False
    return ir.DataType(target.as_int()).itemsize > source.dtype.itemsize


#: Elements above which a widening Cast of a constant is left to run time.
_WIDEN_LIMIT = 8192


def _invalid_at_opset(node: ir.Node, opsets: dict[str, int]) -> str | None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    version = opsets.get(domain)
    if version is None:
        return f"the model imports no opset for domain '{domain}'"
    try:
        schema = onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return f"{node.op_type} does not exist at opset {version}"
    inputs = len(node.inputs)
    if not schema.min_input <= inputs <= schema.max_input:
        return f"{node.op_type}-{schema.since_version} takes {schema.min_input}-{schema.max_input} inputs, not {inputs}"
    unknown = set(node.attributes) - set(schema.attributes)
    if unknown:
        return f"{node.op_type}-{schema.since_version} has no attribute {sorted(unknown)}"
    if node.op_type == "Constant":
        return _constant_type_problem(node, schema)
    return None


def _constant_type_problem(node: ir.Node, schema: onnx.defs.OpSchema) -> str | None:
    """Constant-1 (before opset 9) holds float tensors only."""
    value = node.attributes.get("value")
    if value is None or value.type != ir.AttributeType.TENSOR:
        return None
    type_str = f"tensor({value.as_tensor().dtype.name.lower()})"
    allowed = {s for c in schema.type_constraints for s in c.allowed_type_strs}
    if allowed and type_str not in allowed:
        return f"Constant-{schema.since_version} cannot hold a {type_str}"
    return None
