"""``manifest.json``: what ``edgeopt compile`` wrote, checkable against the files.

One entry per artifact (target, runtime, device, precision, relative file, size,
sha256, the signature its runtime sees, notes) or per failed target (error class
and one-line message), plus the source model's sha256 and the calibration data.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.core.errors import ModelLoadError, ModelSaveError
from edgeopt.core.target import Signature, TensorSpec

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ArtifactEntry:
    """One target's outcome: an artifact, or the error that stopped it (``error`` set)."""

    target: str
    runtime: str
    device: str
    precision: str
    file: str | None = None  # relative to the manifest's folder
    size_bytes: int | None = None
    sha256: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None  # error class name
    message: str | None = None
    seconds: float = 0.0
    cpu: str | None = None  # the CPU family an int8 artifact is built for (x86-avx2, x86-vnni, arm64)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def signature(self) -> Signature:
        return Signature(self.inputs, self.outputs)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArtifactEntry:
        values = dict(raw)
        for key in ("inputs", "outputs"):
            values[key] = tuple(TensorSpec(**{**s, "shape": tuple(s["shape"])}) for s in values.get(key, ()))
        values["notes"] = tuple(values.get("notes", ()))
        return cls(**values)


@dataclass(frozen=True)
class Manifest:
    source: str
    source_sha256: str
    calibration: str | None
    artifacts: tuple[ArtifactEntry, ...] = field(default_factory=tuple)
    version: int = FORMAT_VERSION

    @property
    def failed(self) -> list[ArtifactEntry]:
        return [a for a in self.artifacts if not a.ok]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_manifest(manifest: Manifest, out_dir: Path) -> Path:
    """Write ``out_dir/manifest.json`` atomically (temp file + rename)."""
    dest = Path(out_dir).resolve() / MANIFEST
    try:
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=dest.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest.as_dict(), f, indent=2)
        os.replace(tmp, dest)
    except OSError as e:
        raise ModelSaveError(f"{dest}: cannot write the manifest ({e}). Check the folder is writable.") from e
    return dest


def read_manifest(out_dir: str | os.PathLike[str], *, verify: bool = True) -> Manifest:
    """Read ``out_dir/manifest.json``; with ``verify``, check every artifact's size and sha256.

    Raises:
        ModelLoadError: no manifest, unreadable JSON, or an artifact missing or changed.
    """
    folder = Path(out_dir).resolve()
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"{path}: no manifest here. Run edgeopt compile MODEL -o {folder} first.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = tuple(ArtifactEntry.from_dict(a) for a in raw["artifacts"])
        manifest = Manifest(raw["source"], raw["source_sha256"], raw.get("calibration"), entries,
                            raw.get("version", FORMAT_VERSION))
    except (ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"{path}: not an edgeopt manifest ({e}). Re-run edgeopt compile.") from e
    if verify:
        for entry in manifest.artifacts:
            if entry.ok:
                _verify(folder, entry)
    return manifest


def artifact_path(out_dir: str | os.PathLike[str], entry: ArtifactEntry) -> Path:
    assert entry.file is not None, "failed targets have no artifact"
    return Path(out_dir).resolve() / entry.file


def _verify(folder: Path, entry: ArtifactEntry) -> None:
    file = artifact_path(folder, entry)
    if not file.is_file():
        raise ModelLoadError(f"{file}: artifact of target '{entry.target}' is missing. Re-run edgeopt compile.")
    if file.stat().st_size != entry.size_bytes or sha256(file) != entry.sha256:
        raise ModelLoadError(
            f"{file}: artifact of target '{entry.target}' does not match its sha256 in the manifest. "
            "Re-run edgeopt compile."
        )
