"""The weight-sharing road: codebook clustering, cross-layer sharing and low-rank factors, with a report."""

from edgeopt.sharing.compress import CompressResult, low_rank_file, share_weights_file
from edgeopt.sharing.report import FileSize, OutputFidelity, output_fidelity

__all__ = [
    "CompressResult",
    "FileSize",
    "OutputFidelity",
    "low_rank_file",
    "output_fidelity",
    "share_weights_file",
]
