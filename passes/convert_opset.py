"""Convert a model's default-domain opset with onnxscript's version converter."""

from __future__ import annotations

import logging

import onnx
import onnx.helper
import onnx_ir as ir
import onnxscript.version_converter

from edgeopt.core.errors import UnsupportedOpsetError
from edgeopt.core.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class ConvertOpsetPass(EdgeoptPass):
    """Rewrite the model to another default-domain opset (e.g. up to 17).

    Uses onnxscript's version converter, which falls back to ONNX's converter for
    adapters it lacks (and inlines model-local functions on the way). Fails with a
    clear error when neither can convert the model. The IR version is raised to
    the minimum the new opset requires.

    Args:
        target_version: The default-domain opset to convert to.
    """

    name = "convert-opset"

    def __init__(self, *, target_version: int = 17) -> None:
        super().__init__()
        self.target_version = target_version

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        current = model.opset_imports.get("")
        if current == self.target_version:
            return ir.passes.PassResult(model, modified=False)
        try:
            onnxscript.version_converter.convert_version(model, self.target_version, fallback=True)
        except Exception as e:
            raise _failed(current, self.target_version, str(e) or type(e).__name__) from e
        if model.opset_imports.get("") != self.target_version:  # the fallback only logs
            raise _failed(current, self.target_version, "no converter could rewrite every node")
        model.ir_version = max(model.ir_version, _min_ir_version(self.target_version))
        logger.info("convert-opset: %s -> %d", current, self.target_version)
        return ir.passes.PassResult(model, modified=model.opset_imports.get("") != current)


def _failed(current: int | None, target: int, why: str) -> UnsupportedOpsetError:
    return UnsupportedOpsetError(
        f"converting opset {current} to {target} failed: {why.splitlines()[0]}. "
        "Try another --to version, or re-export the model at the opset you need."
    )



def _min_ir_version(opset: int) -> int:
    """The lowest IR version that ONNX pairs with ``opset`` of the default domain."""
    try:
        return int(onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]))
    except (ValueError, KeyError):  # an opset newer than this onnx knows: leave it alone
        return 3
