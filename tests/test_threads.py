"""zippy.threads: one call sets OpenCV, torch and the matcher."""

from __future__ import annotations

import cv2
import pytest
import torch

from zippy import matching
from zippy.threads import set_threads, thread_info


@pytest.fixture
def restore_threads():
    before = (cv2.getNumThreads(), torch.get_num_threads(), matching.get_num_threads())
    yield
    cv2.setNumThreads(before[0])
    torch.set_num_threads(before[1])
    matching.set_num_threads(before[2])


def test_set_threads_sets_every_library(restore_threads):
    set_threads(1)
    info = thread_info()
    assert (info["opencv_threads"], info["torch_threads"], info["matcher_threads"]) == (1, 1, 1)
    assert torch.get_num_threads() == 1


def test_matcher_threads_capped_at_numba_pool(restore_threads):
    limit = matching.max_num_threads()
    if limit is None:
        pytest.skip("numba is not installed: the matcher has no thread limit")
    set_threads(limit + 3)
    assert matching.get_num_threads() == limit
    assert cv2.getNumThreads() == limit + 3
    with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
        matching.set_num_threads(limit + 1)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_set_threads_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="positive int"):
        set_threads(bad)
