"""The export road: PyTorch module to ONNX with both exporters, checked numerically against the source."""

from edgeopt.exporting.from_source import SourceExport, SourceExportConfig, export_source
from edgeopt.exporting.sources import TorchSource, load_source
from edgeopt.exporting.torch_export import ExportReport, ExportResult, export

__all__ = [
    "ExportReport",
    "ExportResult",
    "SourceExport",
    "SourceExportConfig",
    "TorchSource",
    "export",
    "export_source",
    "load_source",
]
