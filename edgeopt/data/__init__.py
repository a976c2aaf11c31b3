"""Sample data for calibration and validation: arrays, images, callables, loaders, checked against the model."""
