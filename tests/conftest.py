"""Shared fixtures: paths to ../shared (skipped with a reason when absent) and small synthetic images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_TEACHERS = REPO.parent / "shared" / "teachers"
# the research tools (tools/, not installed) are imported by their module names in their tests
sys.path.insert(0, str(REPO / "tools"))


def pytest_report_header(config) -> list[str]:
    """The CPU (model, AVX2 / AVX-512 VNNI / AMX flags, ISA limits) and the int8 path its kernels allow."""
    from zippy.cpu import cpu_summary

    lines = [f"cpu: {cpu_summary()}"]
    try:
        from zippy.quant.int8 import kernel_check
    except ImportError as e:  # torch missing: the tests that need it say so
        return [*lines, f"int8 engine: not checked ({e})"]
    check = kernel_check()
    lines.append(f"int8 engine path: {check.path or 'none'} ({check.reason})")
    return lines


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (only present in the team workspace)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def trained_zippypoint():
    """The shipped trained zippypoint network (fake-quantized, eval mode)."""
    from zippy.weights import build_model, load_weights, shipped_weights

    path = shipped_weights("zippypoint")
    if path is None:
        pytest.skip("weights/zippypoint.pt is not installed")
    return build_model(*load_weights(path)[:2]).eval()


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


def _calibrated_zippypoint(seed: int = 0, *, unsaturated: bool = False, **config):
    """An untrained zippypoint network (ModelConfig fields ``config``) in eval mode, its EMA quantization
    ranges calibrated on a few random images.

    ``unsaturated``: binary blocks whose conv output can exceed 255 (9 * C_in > 255) get a post-ReLU range
    up to 9 * C_in, as trained networks have, so the int8 engine needs their exact int32 outputs (calibration
    on random images leaves ranges that saturate below 255, where uint8 outputs suffice).
    """
    import torch

    from zippy.models import KeypointNet, ModelConfig
    from zippy.models.layers import Residual
    from zippy.quant.layers import BinaryConv2d

    torch.manual_seed(seed)
    model = KeypointNet(ModelConfig(backbone="zippypoint", **config))
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 3, 64, 96))
        blocks = [m for m in model.modules() if isinstance(m, Residual) and isinstance(m.branch[0], BinaryConv2d)]
        for m in blocks if unsaturated else []:
            cin = m.branch[0].in_channels
            if 9 * cin > 255:
                m.branch[2].hi.fill_(9.0 * cin)
    return model.eval()


@pytest.fixture(scope="session")
def make_calibrated_zippypoint():
    """Factory of calibrated untrained zippypoint networks: ``make(seed=0, **model_config_fields)``."""
    return _calibrated_zippypoint


@pytest.fixture(scope="session")
def calibrated_zippypoint(make_calibrated_zippypoint):
    """An untrained zippypoint network whose EMA quantization ranges were calibrated on a few images."""
    return make_calibrated_zippypoint()
