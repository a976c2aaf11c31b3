"""What a compression costs and saves: file size raw and zipped, and fidelity on sample data.

Zipped size is what a download or an app bundle pays (DEFLATE, as in ``zipfile``);
dense clustered weights shrink only there, codebook and low-rank forms shrink raw.
The fidelity measure lives in :mod:`edgeopt.core.output_fidelity` (the prune road uses it too).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgeopt.core.output_fidelity import OutputFidelity, output_fidelity


@dataclass(frozen=True)
class FileSize:
    """A model's bytes on disk (external data included) and zipped."""

    raw: int
    zipped: int


def file_size(path: str | os.PathLike[str]) -> FileSize:
    """Raw and DEFLATE-zipped size of an ONNX file and its ``.data`` file, if any."""
    files = [Path(path)]
    data = Path(f"{path}.data")
    if data.is_file():
        files.append(data)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for file in files:
            archive.write(file, arcname=file.name)
    return FileSize(sum(f.stat().st_size for f in files), buffer.tell())


__all__ = ["FileSize", "OutputFidelity", "file_size", "output_fidelity"]
