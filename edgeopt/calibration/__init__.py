"""Stream data through a model and observe its tensors: ranges and histograms for quantization and repairs."""
