"""Shared fixtures: paths to ../shared (skipped with a reason when absent) and small synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_TEACHERS = REPO.parent / "shared" / "teachers"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (only present in the team workspace)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (tests run two at a time under ``-n 2``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real photo shipped with scikit-image (RGB uint8 512x512)."""
    import skimage.data

    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def calibrated_zippypoint():
    """An untrained zippypoint network whose EMA quantization ranges were calibrated on a few images."""
    import torch

    from zippy.models import KeypointNet, ModelConfig

    torch.manual_seed(0)
    model = KeypointNet(ModelConfig(backbone="zippypoint"))
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 64, 96))
    return model.eval()
