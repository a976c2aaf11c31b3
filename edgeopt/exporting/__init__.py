"""The export road: PyTorch module to ONNX with both exporters, checked numerically against the source."""

from edgeopt.exporting.torch_export import ExportReport, ExportResult, export

__all__ = [
    "ExportReport",
    "ExportResult",
    "export",
]
