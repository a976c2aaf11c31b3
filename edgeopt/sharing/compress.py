"""The compress road: weight sharing and low-rank factorization of a model file, measured.

Shared by ``edgeopt share-weights``, ``edgeopt low-rank`` and the benchmarks: load,
run the passes, save atomically, then report the file size before and after (raw
and zipped), the parameters, and the fidelity of the first output on sample data
(``calibration``, else random inputs).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from edgeopt.core.errors import PassOptionError
from edgeopt.core.inspect_model import ModelSummary, summarize
from edgeopt.core.model_checks import check_model
from edgeopt.core.model_io import load_model, save_model
from edgeopt.core.runtime import Feeds, random_feeds
from edgeopt.data.readers import batches, open_reader
from edgeopt.passes.cluster_weights import ClusterWeightsPass
from edgeopt.passes.factorize_low_rank import FactorizeLowRankPass
from edgeopt.passes.share_weights_across_layers import ShareWeightsAcrossLayersPass
from edgeopt.pipeline import cleanup as cleanup_preset
from edgeopt.sharing.report import FileSize, OutputFidelity, file_size, output_fidelity


@dataclass
class CompressResult:
    """What a compression did to a model file."""

    output: Path
    before: ModelSummary
    after: ModelSummary
    size_before: FileSize
    size_after: FileSize
    fidelity: OutputFidelity
    changes: list[dict[str, Any]] = field(default_factory=list)
    """One row per clustered tensor, shared weight or factorized layer."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "size_before": vars(self.size_before), "size_after": vars(self.size_after),
            "parameters_before": self.before.parameters, "parameters_after": self.after.parameters,
            "macs_before": self.before.macs, "macs_after": self.after.macs,
            "fidelity": vars(self.fidelity), "changes": self.changes,
        }


def share_weights_file(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    clusters: int = 16,
    form: Literal["codebook", "compressible"] = "codebook",
    per_channel: bool = False,
    channel_scale: bool = False,
    across_layers: float | None = None,
    min_elements: int = 1024,
    calibration: str | Iterable[Feeds] | None = None,
    samples: int = 64,
    cleanup: bool = True,
) -> CompressResult:
    """Cross-layer sharing (``across_layers`` = tolerance, if given), then k-means
    clustering to ``clusters`` values (0: no clustering), written to ``output``.

    With ``calibration`` sample data (not ``random:N``, which only checks fidelity), the
    clustering is data-aware: chosen for each layer's outputs on the data."""
    if clusters == 0 and across_layers is None:
        raise PassOptionError("share-weights: nothing to do with --clusters 0; "
                              "give --clusters K or --across-layers TOLERANCE.")
    passes: list[ir.passes.PassBase] = []
    if across_layers is not None:
        passes.append(ShareWeightsAcrossLayersPass(tolerance=across_layers, min_elements=min_elements))
    if clusters:
        real = calibration is not None and not (isinstance(calibration, str) and calibration.startswith("random:"))
        passes.append(ClusterWeightsPass(clusters=clusters, form=form, per_channel=per_channel,
                                         channel_scale=channel_scale, min_elements=min_elements,
                                         calibration=_reader(calibration, model_path) if real else None,
                                         samples=samples))
    return _compress(model_path, output, passes, calibration, samples, cleanup)


def low_rank_file(
    model_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    energy: float | None = None,
    params: float | None = None,
    min_elements: int = 4096,
    calibration: str | Iterable[Feeds] | None = None,
    samples: int = 64,
    cleanup: bool = True,
) -> CompressResult:
    """Factorize MatMul/Gemm/1x1 Conv weights (data-aware when ``calibration`` is given)."""
    factorize = FactorizeLowRankPass(energy=energy, params=params, min_elements=min_elements,
                                     calibration=_reader(calibration, model_path), samples=samples)
    return _compress(model_path, output, [factorize], calibration, samples, cleanup)


def _reader(calibration: str | Iterable[Feeds] | None, model_path: str | os.PathLike[str]) -> Any:
    if not isinstance(calibration, str):
        return calibration

    return open_reader(calibration, load_model(model_path))


def _compress(
    model_path: str | os.PathLike[str], output: str | os.PathLike[str], passes: list[ir.passes.PassBase],
    calibration: str | Iterable[Feeds] | None, samples: int, cleanup: bool,
) -> CompressResult:
    model = load_model(model_path)
    check_model(model)
    before = summarize(model)  # the file as given: what the user gains includes the clean-up
    if cleanup:
        cleanup_preset()(model)
    reference = model.clone()
    reader = _reader(calibration, model_path)
    evaluation: Iterable[Feeds] = batches(reader, reference, limit=samples) if reader is not None \
        else (random_feeds(reference, seed=i, default_dim=8) for i in range(2))  # one batch at a time
    if reader is not None:  # data that does not fit fails before any work; still one pass over it
        stream = iter(evaluation)
        evaluation = itertools.chain([next(stream)], stream)
    for pass_ in passes:
        pass_(model)
    out = save_model(model, output)
    changes = [dict(vars(row)) for pass_ in passes for row in getattr(pass_, "last_report", [])]
    return CompressResult(out, before, summarize(load_model(out)), file_size(model_path), file_size(out),
                          output_fidelity(reference, model, evaluation), changes)
