"""The shipped digits data as a search reads it: calibration batches and labelled validation data."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.cli.demo_model import DATA, preprocess


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Calibration batches (training images) and validation data with labels (key ``label``)."""
    data = np.load(DATA)
    root = tmp_path_factory.mktemp("digits")
    (root / "calib").mkdir()
    train = preprocess(data["x_train"])
    for i in range(0, 256, 128):
        np.savez(root / "calib" / f"batch_{i:04d}.npz", image=train[i:i + 128])
    np.savez(root / "val.npz", image=preprocess(data["x_val"][:200]), label=data["y_val"][:200])
    return str(root / "calib"), str(root / "val.npz")
