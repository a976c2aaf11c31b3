"""Convert a model's default-domain opset with onnxscript's version converter."""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnxscript.version_converter

from edgeopt.errors import UnsupportedOpsetError
from edgeopt.pass_base import EdgeoptPass

logger = logging.getLogger(__name__)


class ConvertOpsetPass(EdgeoptPass):
    """Rewrite the model to another default-domain opset (e.g. up to 17).

    Uses onnxscript's version converter, which falls back to ONNX's converter for
    adapters it lacks. Fails with a clear error when neither can convert a node.

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
        logger.info("convert-opset: %s -> %d", current, self.target_version)
        return ir.passes.PassResult(model, modified=model.opset_imports.get("") != current)


def _failed(current: int | None, target: int, why: str) -> UnsupportedOpsetError:
    return UnsupportedOpsetError(
        f"converting opset {current} to {target} failed: {why.splitlines()[0]}. "
        "Try another --to version, or re-export the model at the opset you need."
    )
