"""The quantization road: static, dynamic and weight-only quantization, sensitivity and accuracy fallback."""
