"""The export road: PyTorch module to ONNX with both exporters, checked numerically against the source."""
