"""What CPU this is: model name and the instruction-set flags that decide which int8 kernels run.

The int8 engine does not rely on these flags (it checks its kernels by running them,
:func:`zippy.quant.int8.kernel_check`); they are recorded next to benchmark results and test runs so that
a number can be traced to the hardware that produced it.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["FLAGS", "cpu_info", "cpu_summary"]

# flag name in /proc/cpuinfo -> key in cpu_info()["flags"]
FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_vpopcntdq": "avx512_vpopcntdq",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "asimd": "neon",  # ARM: Advanced SIMD
    "asimddp": "neon_dotprod",  # ARM: SDOT / UDOT
    "i8mm": "i8mm",
}


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU model, its int8-relevant flags and the settings that limit what oneDNN / numba use.

    Returns:
        ``{"machine": "x86_64", "model": "AMD EPYC ...", "flags": {"avx2": True, ...}, "cpu_count": 2,
        "onednn_max_cpu_isa": None, "numba_cpu_name": None}``; flags are None when unknown (no
        /proc/cpuinfo, e.g. macOS or Windows).
    """
    text = _cpuinfo_text()
    model = None
    present: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model"):
            model = value.strip()
        elif key in ("flags", "features") and not present:
            present = set(value.split())
    flags = {name: (flag in present) if present else None for flag, name in FLAGS.items()}
    return {
        "machine": platform.machine(),
        "model": model or platform.processor() or None,
        "flags": flags,
        "cpu_count": os.cpu_count(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"),
        "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME"),
    }


def cpu_summary() -> str:
    """One line: model, the flags present, and any ISA limit set in the environment."""
    info = cpu_info()
    shown = [k for k, v in info["flags"].items() if v]
    unknown = all(v is None for v in info["flags"].values())
    text = f"{info['model'] or 'unknown CPU'} ({info['machine']}, {info['cpu_count']} CPUs); "
    text += "flags unknown" if unknown else "flags: " + (" ".join(shown) if shown else "none of " + " ".join(FLAGS))
    for key in ("onednn_max_cpu_isa", "numba_cpu_name"):
        if info[key]:
            text += f"; {key.upper()}={info[key]}"
    return text
