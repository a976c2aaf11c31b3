"""Latency of several compiled artifacts measured side by side, so that their ratios hold.

:func:`~edgeopt.deploy.validation.validate` times each artifact once, whenever it
runs; two artifacts validated minutes apart on a busy machine can differ by 2x from
the load alone. Here every artifact runs the same samples in turns: one block of
calls per artifact (so that one runtime's spinning threads never slow another's),
the order of the blocks reversed every round, the p50 of each artifact over all
rounds but the first (warm-up).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgeopt.core.errors import CalibrationDataError, ModelLoadError
from edgeopt.core.model_io import load_model
from edgeopt.core.runtime import Feeds
from edgeopt.core.scoring import percentiles_ms
from edgeopt.data.validation import labelled_batches
from edgeopt.deploy.bundle_runner import Runner
from edgeopt.deploy.manifest import artifact_path, read_manifest
from edgeopt.deploy.target_registry import get_target
from edgeopt.deploy.validation import native_runner, static_batch


def time_side_by_side(folders: Mapping[str, str | os.PathLike[str]], *, data: str | os.PathLike[str],
                      reference: str | os.PathLike[str], rounds: int = 5, limit: int | None = 32,
                      ) -> dict[str, float]:
    """p50 latency (ms per call) of the first artifact of each compile folder, timed in turns.

    Args:
        folders: Name -> compile folder (``edgeopt compile`` output).
        data: Input data spec (as ``validate`` takes it); each call runs one sample (or the artifact's
            fixed batch).
        reference: A model with the inputs the data feeds (the data is checked against it).
        rounds: Passes over the samples; the first is warm-up and not counted (an odd number leaves as
            many counted rounds in each order).
        limit: Samples per pass.

    Raises:
        ModelLoadError: a folder holds no artifact that compiled.
        CalibrationDataError: no samples in ``data``.
    """
    if rounds < 2:
        raise ValueError(f"rounds must be 2 or more (the first is warm-up), got {rounds}")
    model = load_model(reference)
    samples = [feeds for feeds, _ in labelled_batches(data, model, batch_size=1, limit=limit)]
    calls = {name: _calls(Path(folder), samples) for name, folder in folders.items()}
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            run, inputs = calls[name]
            for native_in in inputs:
                began = time.perf_counter()
                run(native_in)
                if round_:
                    seconds[name].append(time.perf_counter() - began)
    return {name: float(percentiles_ms(times)[0] or 0.0) for name, times in seconds.items()}


def _calls(folder: Path, samples: list[Feeds]) -> tuple[Runner, list[Feeds]]:
    """The folder's first compiled artifact, loaded once, and its native inputs for ``samples``."""
    manifest = read_manifest(folder)
    entry = next((e for e in manifest.artifacts if e.ok), None)
    if entry is None:
        raise ModelLoadError(f"{folder}: no artifact compiled; run edgeopt compile again and read its errors.")
    target, path = get_target(entry.target), artifact_path(folder, entry)
    step = static_batch(entry) or 1
    if not samples:
        raise CalibrationDataError("no samples to time the artifacts on; give at least one.")
    pool = samples * -(-step // len(samples))  # a fixed batch larger than the samples repeats them
    stacked = [{n: np.concatenate([s[n] for s in pool[i:i + step]]) for n in samples[0]}
               for i in range(0, max(len(samples), step) - step + 1, step)]
    return native_runner(target, path), [target.encode_inputs(path, feeds) for feeds in stacked]

