"""ORT format (``.ort``): the flatbuffer model that ONNX Runtime Mobile loads.

Converted by ONNX Runtime's own tool (``onnxruntime.tools.convert_onnx_models_to_ort``,
"fixed" optimization style, the one its docs recommend for a known target) in a
temporary folder, so the tool's side files (its operator config) and its console
output (prints, and a ``logging.basicConfig`` call) stay out of the user's folder
and terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edgeopt.core.errors import ExportError

logger = logging.getLogger(__name__)


def to_ort_format(artifact: Path) -> Path:
    """Write ``artifact`` with the suffix ``.ort`` beside it and return that path.

    Raises:
        ExportError: ONNX Runtime could not convert the model (the message says why).
    """
    from edgeopt.passes.quantize_common import import_quietly, quiet_root_logging

    tool = import_quietly("onnxruntime.tools.convert_onnx_models_to_ort")
    artifact = Path(artifact).resolve()
    dest = artifact.with_suffix(".ort")
    with tempfile.TemporaryDirectory(dir=artifact.parent, prefix=".ort-") as tmp:
        work = Path(tmp) / "model.onnx"
        shutil.copyfile(artifact, work)
        output = io.StringIO()
        try:
            with quiet_root_logging(), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                tool.convert_onnx_models_to_ort(work, output_dir=Path(tmp) / "out",
                                                optimization_styles=[tool.OptimizationStyle.Fixed])
        except Exception as e:  # noqa: BLE001 - the tool raises bare exceptions
            raise ExportError(f"{artifact}: ONNX Runtime could not write the ORT format ({e}). "
                              "Check that the model loads in onnxruntime, or export without --ort-format.") from e
        produced = sorted((Path(tmp) / "out").rglob("*.ort"))
        if not produced:
            raise ExportError(f"{artifact}: ONNX Runtime wrote no .ort file ({output.getvalue().strip()[-200:]}). "
                              "Export without the ORT format, or report the model.")
        os.replace(produced[0], dest)
    logger.info("ort-format: wrote %s (%d bytes)", dest, dest.stat().st_size)
    return dest
