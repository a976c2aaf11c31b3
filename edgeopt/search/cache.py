"""A content-addressed cache of stage outputs and candidate scores, shared by every search.

A stage's output is keyed by the input model's bytes, the stages so far with
their options, the calibration data's bytes and the environment (edgeopt's
cache format, the host's CPU family), so a candidate that shares a prefix of
stages with an earlier one (a pruned model under several quantization settings)
starts from the stored model. A candidate's scores add the target and the
validation data to the key. Entries are written into a temporary folder and
renamed into place, so a killed search never leaves half an entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeopt.core.errors import EdgeoptError

logger = logging.getLogger(__name__)

FORMAT = 3
"""Bumped whenever what a key stands for changes, so older entries are never read."""


def cache_root() -> Path:
    """``$EDGEOPT_CACHE_DIR/search``, else ``$XDG_CACHE_HOME/edgeopt/search`` (``~/.cache`` by default)."""
    if os.environ.get("EDGEOPT_CACHE_DIR"):
        return Path(os.environ["EDGEOPT_CACHE_DIR"]) / "search"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgeopt" / "search"


def key(*parts: Any) -> str:
    """sha256 of the parts as canonical JSON."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def data_digest(spec: str | os.PathLike[str]) -> str:
    """A data spec's content: ``random:N`` as written; a file's bytes; a folder's files (names and bytes)."""
    text = os.fspath(spec)
    if text.startswith("random:"):
        return text
    path = Path(text)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return key([[str(p.relative_to(path)), file_digest(p)] for p in files])
    return text  # the reader reports what is wrong with it


class CachedFailure(EdgeoptError):
    """A stage or candidate that failed before with the same key (its error is stored)."""


class Cache:
    """Entries under ``root``: ``stages/<key>/`` (``model.onnx``, ``info.json``) and
    ``candidates/<key>/`` (``scores.json`` and the compile folder). Counts its hits and misses."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()
        self.hits = self.misses = 0

    def stage(self, entry: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, bool]:
        """The stored ``model.onnx`` of ``entry``, built by ``build(path)`` on a miss; (path, was cached)."""
        folder = self.root / "stages" / entry
        found = self._lookup(folder, "info.json")
        if found is not None:
            return folder / "model.onnx", True
        self._build(folder, lambda tmp: {"notes": build(tmp / "model.onnx")}, "info.json")
        return folder / "model.onnx", False

    def candidate(self, entry: str, build: Callable[[Path], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """The stored scores of ``entry``, computed by ``build(folder)`` on a miss; (scores, was cached)."""
        folder = self.candidate_folder(entry)
        found = self._lookup(folder, "scores.json")
        if found is not None:
            return found, True
        return self._build(folder, build, "scores.json"), False

    def candidate_folder(self, entry: str) -> Path:
        """Where ``entry``'s scores and files are (or will be) stored."""
        return self.root / "candidates" / entry

    def _lookup(self, folder: Path, name: str) -> dict[str, Any] | None:
        try:
            if (folder / "failed.json").is_file():
                self.hits += 1
                raise CachedFailure(json.loads((folder / "failed.json").read_text())["error"])
            if (folder / name).is_file():
                self.hits += 1
                return dict(json.loads((folder / name).read_text()))
        except (OSError, ValueError, KeyError) as e:  # a damaged entry is rebuilt
            logger.warning("search cache: %s unreadable (%s); rebuilding it", folder, e)
            shutil.rmtree(folder, ignore_errors=True)
        return None

    def _build(self, folder: Path, build: Callable[[Path], dict[str, Any]], name: str) -> dict[str, Any]:
        self.misses += 1
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name[:12]}.", dir=folder.parent))
        try:
            try:
                payload = build(staging)
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - passes are deterministic: the same inputs fail the same way
                message = " ".join(str(e).split()) or type(e).__name__
                if not isinstance(e, EdgeoptError):
                    message = f"{type(e).__name__}: {message}"
                    logger.debug("search cache: %s failed unexpectedly", folder.name, exc_info=True)
                (staging / "failed.json").write_text(json.dumps({"error": message}))
                self._publish(staging, folder)
                raise CachedFailure(message) from e
            (staging / name).write_text(json.dumps(payload, indent=1, default=str))
            self._publish(staging, folder)
            return payload
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _publish(staging: Path, folder: Path) -> None:
        try:
            os.replace(staging, folder)
        except OSError:  # another search wrote the same entry first: theirs stands
            logger.debug("search cache: %s already written", folder)
