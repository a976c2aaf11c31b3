"""Where candidates run: a local Ray started for the search stays quiet unless edgeopt logs."""

from __future__ import annotations

import logging
import sys

import pytest

from edgeopt.search.parallel import RayTasks, runner


def test_a_local_ray_writes_nothing_to_the_terminal_unless_edgeopt_logs(capfd: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray")
    logging.getLogger("edgeopt").setLevel(logging.WARNING)  # the CLI's default: no -v
    with runner(evaluator=None, workers=2) as run:  # type: ignore[arg-type]  # nothing is evaluated here
        assert isinstance(run, RayTasks) and run.width == 2
        logging.getLogger("ray.any.module").warning("a notice Ray's own handler would print")
        assert logging.getLogger("ray").getEffectiveLevel() == logging.ERROR
    err = capfd.readouterr().err
    assert "notice" not in err and "Token authentication" not in err, err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # shut down after the search
