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
            raise UnsupportedOpsetError(
                f"converting opset {current} to {self.target_version} failed: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. "
                "Try another --to version, or re-export the model at the opset you need."
            ) from e
        logger.info("convert-opset: %s -> %d", current, self.target_version)
        return ir.passes.PassResult(model, modified=model.opset_imports.get("") != current)
