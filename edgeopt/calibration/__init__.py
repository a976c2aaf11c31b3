"""Stream data through a model and observe its tensors: ranges and histograms for quantization and repairs."""

from edgeopt.calibration.fetch import FETCH_BYTES, FetchGroups
from edgeopt.calibration.observers import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    Observer,
    QuantParams,
    make_observer_factory,
    qparams_from_range,
)
from edgeopt.calibration.stream import CalibrationResult, calibrate, stream_output_groups, stream_outputs

__all__ = [
    "FETCH_BYTES",
    "CalibrationResult",
    "FetchGroups",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "QuantParams",
    "calibrate",
    "make_observer_factory",
    "qparams_from_range",
    "stream_output_groups",
    "stream_outputs",
]
