"""Stream data through a model and observe its tensors: ranges and histograms for quantization and repairs."""

from edgeopt.calibration.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    QuantParams,
    make_observer_factory,
    qparams_from_range,
)
from edgeopt.calibration.stream import CalibrationResult, calibrate, stream_outputs

__all__ = [
    "CalibrationResult",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "QuantParams",
    "calibrate",
    "make_observer_factory",
    "qparams_from_range",
    "stream_outputs",
]
