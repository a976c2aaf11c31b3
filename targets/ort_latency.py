"""Side-by-side latency of ONNX models in ONNX Runtime on this machine.

The models run interleaved (one call of each per round), so a load spike on a
shared machine hits them all alike; medians are compared, never single runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import onnx_ir as ir

from edgeopt.core.runtime import Feeds, create_session


def side_by_side_ms(
    models: Mapping[str, ir.Model], feeds: Feeds, *, warmup: int = 3, repeat: int = 20
) -> dict[str, float]:
    """Median wall time (ms) of one run of each model on ``feeds``, measured interleaved.

    Sessions use ORT's full graph optimizations, as a deployed model would.
    """
    sessions = {name: create_session(model, optimize=True) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(warmup + repeat):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}
