"""Result files shared by every evaluation pipeline: summary.json, markdown tables, provenance.

A summary is one JSON document::

    {"protocol": {...}, "dataset": {...}, "methods": {name: info}, "environment": {...},
     "rows": [...per pair / per query...], "aggregates": {...}, "skipped": {...}, ...}

with ``environment`` holding the versions (python, numpy, torch, opencv, kornia, zippy), the git
commit of the repository when available, the thread count and the load average. Non-finite floats
(a failed homography's inf corner error, an undefined mean) are written as JSON ``null``. Every
file is written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "environment",
    "git_commit",
    "markdown_table",
    "print_results",
    "to_jsonable",
    "versions",
    "write_json",
    "write_summary",
    "write_text",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created). Returns the path."""
    from zippy.io import write_text as _write_text

    return _write_text(path, text)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure to ``path`` atomically (parent folders created) and close it. Returns the path."""
    import matplotlib.pyplot as plt

    from zippy.io import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or None)
    finally:
        plt.close(fig)
    return path


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays, paths and tuples to JSON types; inf / nan become None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise ValueError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic JSON write of ``obj`` after :func:`to_jsonable` (indent 1, strict: no NaN / Infinity)."""
    return write_text(path, json.dumps(to_jsonable(obj), indent=1, allow_nan=False) + "\n")


def git_commit(repo: str | os.PathLike = REPO_ROOT) -> str | None:
    """HEAD commit of ``repo`` with a "-dirty" suffix when tracked files changed; None without git or commits."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("git not usable: %s", e)
        return None
    commit = head.stdout.strip()
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _module_version(name: str) -> str | None:
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return str(getattr(module, "__version__", "unknown"))


def versions() -> dict[str, str | None]:
    """Versions of python, numpy, torch, opencv, kornia and zippy (None when a package is missing)."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": _module_version("torch"),
        "opencv": _module_version("cv2"),
        "kornia": _module_version("kornia"),
        "zippy": _module_version("zippy"),
    }


def environment() -> dict[str, Any]:
    """Versions, git commit, host, thread settings and load average at the time of the call."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    threads = None
    if "torch" in sys.modules:
        threads = sys.modules["torch"].get_num_threads()
    return {
        "versions": versions(),
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg": load,
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_summary(
    output_dir: str | os.PathLike,
    *,
    protocol: Mapping[str, Any],
    dataset: Any,
    methods: Mapping[str, Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    aggregates: Any,
    extra: Mapping[str, Any] | None = None,
    name: str = "summary.json",
) -> Path:
    """Write ``output_dir/summary.json`` atomically and return its path.

    Args:
        output_dir: result folder (created).
        protocol: everything needed to reproduce the numbers (resize, top-k, matcher, thresholds, ...).
        dataset: dataset description (paths, sequences used, sequences skipped with reasons).
        methods: method name -> ``Method.info()`` (version, weights, weights sha256, params).
        rows: per-pair (or per-query) metric rows.
        aggregates: aggregated metrics, any JSON-able structure.
        extra: further top-level keys (e.g. "skipped", "timings").
        name: file name.
    """
    doc: dict[str, Any] = {
        "protocol": dict(protocol),
        "dataset": dataset,
        "methods": {k: dict(v) for k, v in methods.items()},
        "environment": environment(),
        "aggregates": aggregates,
        "rows": list(rows),
    }
    for key, value in (extra or {}).items():
        if key in doc:
            raise ValueError(f"extra key {key!r} collides with a summary field")
        doc[key] = value
    return write_json(Path(output_dir) / name, doc)


def print_results(summary: str | os.PathLike, note: str = "") -> None:
    """Print the ``table.md`` beside a ``summary.json`` and where the results are (what eval mains end with)."""
    folder = Path(summary).parent
    print((folder / "table.md").read_text(encoding="utf-8"))
    print(f"results: {folder}{note}")


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        return format(float(value), fmt) if math.isfinite(float(value)) else "-"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str | Sequence[str] = ".3f") -> str:
    """A GitHub markdown table; floats formatted by ``floatfmt`` (one format, or one per column), None/inf/nan as "-".

    Example:
        >>> print(markdown_table(["method", "MMA@3"], [["orb", 0.51234]]))
        | method | MMA@3 |
        |---|---|
        | orb | 0.512 |
    """
    fmts = [floatfmt] * len(headers) if isinstance(floatfmt, str) else list(floatfmt)
    if len(fmts) != len(headers):
        raise ValueError(f"floatfmt needs {len(headers)} formats, got {len(fmts)}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells, expected {len(headers)}: {row!r}")
        lines.append("| " + " | ".join(_cell(v, f) for v, f in zip(row, fmts)) + " |")
    return "\n".join(lines)
