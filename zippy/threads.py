"""Thread settings of the libraries Zippy runs on: OpenCV, torch and the Hamming matcher (numba)."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["set_threads", "thread_info"]


def set_threads(n: int) -> None:
    """Use ``n`` threads in OpenCV, torch (when installed) and the Hamming matcher.

    The matcher gets at most numba's pool size (``NUMBA_NUM_THREADS``, fixed at start-up; see
    :func:`zippy.matching.set_num_threads`).

    Raises:
        ValueError: ``n`` is not a positive int.
    """
    import cv2

    from zippy import matching

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive int, got {n!r}")
    cv2.setNumThreads(n)
    limit = matching.max_num_threads()
    matching.set_num_threads(n if limit is None else min(n, limit))
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(n)


def thread_info() -> dict[str, Any]:
    """The thread settings of OpenCV, the matcher and torch (None when not loaded), and the load average."""
    import cv2

    from zippy import matching

    torch = sys.modules.get("torch")
    try:
        load: list[float] | None = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "opencv_threads": cv2.getNumThreads(),
        "matcher_threads": matching.get_num_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg": load,
    }
