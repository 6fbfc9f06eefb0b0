"""Benchmark of the bitwise matcher: mutual nearest neighbours of N x N descriptors, per method and thread count.

Descriptors are 256 bits with exactly 64 ones (as ZippyPoint's); half of the second set are noisy
copies of the first (8 of the 64 ones moved), the rest random, rows shuffled. Methods:

* ``zippy_numba`` / ``zippy_numpy``: :func:`zippy.matching.match_hamming` (mutual) on either backend;
* ``cv2_hamming``: ``cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match``;
* ``faiss_binary``: two ``faiss.IndexBinaryFlat`` searches (k = 1 both ways) + mutual check (if installed);
* ``torch_gemm``: float32 256-d L2-normalised descriptors, similarity GEMM + argmax both ways + mutual check;
* ``cv2_l2``: ``cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match`` on the same float descriptors;
* ``zippy_l2``: :func:`zippy.matching.match_l2` (mutual) on the same float descriptors.

Every thread count runs in its own subprocess with ``OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS`` set before
any library starts, and also sets OpenCV / torch / faiss threads, so all methods get the same budget.
Times are the median (and min) of up to ``repeats`` calls after one warm-up call; the methods take
turns call by call so that load changes hit all alike (a call longer than ``budget_s`` is timed once).
numba's first-call compile time is measured in a fresh process with an empty cache directory, then
again with that cache filled. Speed-ups are ratios of times measured in the same run.

Writes ``results/bench_matcher/<tag>/``: ``summary.json`` (protocol, environment, load average per
worker, all timings, agreement checks, targets), ``table.md`` and ``bench_matcher.png``.

Usage::

    zippy bench matcher --tag default
    python -m zippy_eval.bench_matcher --sizes 500 1000 2000 5000 --threads 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "BenchMatcherConfig", "add_arguments", "binary_descriptors", "config_from_args", "main", "run"]

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("zippy_numba", "zippy_numpy", "cv2_hamming", "faiss_binary", "torch_gemm", "cv2_l2", "zippy_l2")
LABELS = {
    "zippy_numba": "zippy numba",
    "zippy_numpy": "zippy numpy fallback",
    "cv2_hamming": "cv2 BF Hamming crossCheck",
    "faiss_binary": "faiss IndexBinaryFlat mutual",
    "torch_gemm": "torch GEMM f32 256-d mutual",
    "cv2_l2": "cv2 BF L2 crossCheck (f32 256-d)",
    "zippy_l2": "zippy match_l2 (f32 256-d)",
}
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# issue #3 targets, 1 thread, one run
TARGET_VS_CV2 = 15.0  # zippy_numba >= 15x faster than cv2_hamming at N = 2000 and 5000
TARGET_VS_GEMM = 20.0  # zippy_numba >= 20x faster than torch_gemm at N = 5000
TARGET_NUMPY_VS_CV2 = 1.0  # zippy_numpy no slower than cv2_hamming (every N)


@dataclass(frozen=True)
class BenchMatcherConfig:
    """Benchmark protocol.

    Attributes:
        sizes: N = M values (descriptors per image).
        threads: thread counts, one worker process each; the first one is the headline (targets).
        methods: subset of :data:`METHODS`.
        repeats: timed calls per (method, N) after one warm-up call, at most.
        budget_s: stop repeating a method once it spent this many seconds on one N.
        seed: random seed of the descriptors.
        measure_compile: measure numba's cold / cached first-call time in fresh processes.
    """

    sizes: tuple[int, ...] = (500, 1000, 2000, 5000)
    threads: tuple[int, ...] = (1, 2)
    methods: tuple[str, ...] = METHODS
    repeats: int = 15
    budget_s: float = 2.0
    seed: int = 0
    measure_compile: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choices: {', '.join(METHODS)}")
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"sizes must be positive ints, got {self.sizes}")
        if not self.threads or min(self.threads) < 1:
            raise ValueError(f"threads must be positive ints, got {self.threads}")
        if self.repeats < 1 or self.budget_s <= 0:
            raise ValueError(f"repeats must be >= 1 and budget_s > 0, got {self.repeats}, {self.budget_s}")


# ------------------------------------------------------------------------------------------ data
def binary_descriptors(rng: np.random.Generator, n: int, bits: int = 256, ones: int = 64) -> np.ndarray:
    """Random packed descriptors uint8 [n, bits/8], each with exactly ``ones`` bits set."""
    pos = np.argsort(rng.random((n, bits)), axis=1)[:, :ones]
    dense = np.zeros((n, bits), np.uint8)
    np.put_along_axis(dense, pos, 1, axis=1)
    return np.packbits(dense, axis=1)


def _pair(rng: np.random.Generator, n: int, moved: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two sets: half of d1 are copies of d0 rows with ``moved`` ones moved elsewhere; rows shuffled."""
    d0 = binary_descriptors(rng, n)
    d1 = binary_descriptors(rng, n)
    bits0 = np.unpackbits(d0, axis=1)
    for i in np.flatnonzero(rng.random(n) < 0.5):
        row = bits0[i].copy()
        on, off = np.flatnonzero(row), np.flatnonzero(row == 0)
        row[rng.choice(on, moved, replace=False)] = 0
        row[rng.choice(off, moved, replace=False)] = 1
        d1[i] = np.packbits(row)
    return d0, np.ascontiguousarray(d1[rng.permutation(n)])


def _float_pair(rng: np.random.Generator, n: int, dim: int = 256) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for _ in range(2):
        x = rng.standard_normal((n, dim)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------- worker
def _method_fns(
    name: str, a: np.ndarray, b: np.ndarray, fa: np.ndarray, fb: np.ndarray, threads: int
) -> Callable[[], set]:
    """A callable running one method once and returning its mutual pairs as a set of (i, j)."""
    from zippy import matching

    def as_set(i: np.ndarray, j: np.ndarray) -> set:
        return set(zip(i.tolist(), j.tolist()))

    if name in ("zippy_numba", "zippy_numpy"):
        backend = name.split("_")[1]
        kw = {"threads": threads} if backend == "numba" else {}

        def run_zippy() -> set:
            p, _ = matching.match_hamming(a, b, mutual=True, backend=backend, **kw)
            return as_set(p[:, 0], p[:, 1])

        return run_zippy
    if name == "zippy_l2":

        def run_l2() -> set:
            p, _ = matching.match_l2(fa, fb, mutual=True)
            return as_set(p[:, 0], p[:, 1])

        return run_l2
    if name in ("cv2_hamming", "cv2_l2"):
        import cv2

        norm = cv2.NORM_HAMMING if name == "cv2_hamming" else cv2.NORM_L2
        x, y = (a, b) if name == "cv2_hamming" else (fa, fb)
        bf = cv2.BFMatcher(norm, crossCheck=True)

        def run_cv2() -> set:
            ms = bf.match(x, y)
            return {(m.queryIdx, m.trainIdx) for m in ms}

        return run_cv2
    if name == "faiss_binary":
        import faiss

        bits = a.shape[1] * 8

        def run_faiss() -> set:
            i0 = faiss.IndexBinaryFlat(bits)
            i0.add(a)
            i1 = faiss.IndexBinaryFlat(bits)
            i1.add(b)
            _, nn01 = i1.search(a, 1)
            _, nn10 = i0.search(b, 1)
            rows = np.arange(a.shape[0])
            keep = nn10[nn01[:, 0], 0] == rows
            return as_set(rows[keep], nn01[keep, 0])

        return run_faiss
    if name == "torch_gemm":
        import torch

        ta, tb = torch.from_numpy(fa), torch.from_numpy(fb)

        def run_torch() -> set:
            with torch.inference_mode():
                sim = ta @ tb.T
                r = sim.argmax(dim=1)
                c = sim.argmax(dim=0)
                rows = torch.arange(ta.shape[0])
                keep = c[r] == rows
            return as_set(rows[keep].numpy(), r[keep].numpy())

        return run_torch
    raise ValueError(f"unknown method {name!r}")


def _time_interleaved(
    fns: dict[str, Callable[[], set]], repeats: int, budget_s: float
) -> tuple[dict[str, list[float]], dict[str, set]]:
    """Median-ready timings (ms) of several methods measured in alternating rounds.

    Each method is called once untimed (warm-up, also giving its result), then the methods take
    turns, one timed call each per round, so that a change of machine load hits all of them alike.
    A method stops after ``repeats`` calls or when it has used ``budget_s``; one whose warm-up call
    took longer than ``budget_s`` is timed by that call alone (its only run).
    """
    times: dict[str, list[float]] = {}
    spent: dict[str, float] = {}
    results: dict[str, set] = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        results[name] = fn()
        first = time.perf_counter() - t0
        times[name] = [first * 1e3] if first > budget_s else []
        spent[name] = first if first > budget_s else 0.0
    while True:
        active = [m for m in fns if len(times[m]) < repeats and spent[m] < budget_s]
        if not active:
            return times, results
        for name in active:
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            times[name].append(dt * 1e3)
            spent[name] += dt


def _available(name: str) -> str | None:
    """None when the method can run here, else the reason."""
    import importlib.util

    need = {"faiss_binary": "faiss", "torch_gemm": "torch", "zippy_numba": "numba"}.get(name)
    if need and importlib.util.find_spec(need) is None:
        return f"{need} is not installed"
    return None


def _worker(conf: dict[str, Any], threads: int) -> dict[str, Any]:
    """Measure every method and size with ``threads`` threads (the env vars are already set)."""
    import cv2

    from zippy import matching

    cv2.setNumThreads(threads)
    methods = [m for m in conf["methods"] if _available(m) is None]
    if "torch_gemm" in methods:
        import torch

        torch.set_num_threads(threads)
    if "faiss_binary" in methods:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # faiss's loader logs every build it tries
        try:
            import faiss
        finally:
            root.setLevel(level)
        faiss.omp_set_num_threads(threads)
    warm = matching.warmup(threads=threads) if "zippy_numba" in methods else 0.0
    out: dict[str, Any] = {"threads": threads, "loadavg_before": list(os.getloadavg()), "warmup_s": warm, "rows": []}
    rng = np.random.default_rng(conf["seed"])
    for n in conf["sizes"]:
        a, b = _pair(rng, n)
        fa, fb = _float_pair(rng, n)
        fns = {name: _method_fns(name, a, b, fa, fb, threads) for name in methods}
        times, results = _time_interleaved(fns, conf["repeats"], conf["budget_s"])
        for name in methods:
            out["rows"].append(
                {
                    "n": n,
                    "method": name,
                    "threads": threads,
                    "median_ms": float(np.median(times[name])),
                    "min_ms": float(np.min(times[name])),
                    "runs": len(times[name]),
                    "matches": len(results[name]),
                }
            )
            logger.info("threads=%d N=%d %-13s %9.2f ms", threads, n, name, np.median(times[name]))
        ref = results.get("zippy_numba", results.get("zippy_numpy"))
        agree: dict[str, Any] = {"n": n}
        if ref is not None:
            for name in ("zippy_numpy", "cv2_hamming", "faiss_binary"):
                if name in results:
                    union = len(ref | results[name]) or 1
                    agree[name] = {"identical": results[name] == ref, "jaccard": len(ref & results[name]) / union}
        out.setdefault("agreement", []).append(agree)
    out["loadavg_after"] = list(os.getloadavg())
    return out


def _compile_probe() -> dict[str, Any]:
    """Import and first-call times of the numba kernels in this (fresh) process."""
    t0 = time.perf_counter()
    from zippy import matching

    d = np.zeros((300, 32), np.uint8)
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    matching.match_hamming(d, d, threads=1, backend="numba")
    first_call_s = time.perf_counter() - t0
    import numba

    # the remaining kernels: ratio, knn and (when the pool allows) the parallel variants
    all_kernels_s = matching.warmup("numba", threads=min(2, numba.config.NUMBA_NUM_THREADS))
    return {"import_s": import_s, "first_call_s": first_call_s, "other_kernels_s": all_kernels_s}


def _subprocess(mode: str, payload: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_matcher_") as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "zippy_eval.bench_matcher", "--_worker", mode, json.dumps(payload), str(out)]
        proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"benchmark worker {mode} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


def _measure_compile(threads: int) -> dict[str, Any]:
    env = {k: str(threads) for k in THREAD_ENV}
    with tempfile.TemporaryDirectory(prefix="numba_cache_") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        cold = _subprocess("compile", {}, env)
        cached = _subprocess("compile", {}, env)
    return {"threads": threads, "cold_cache": cold, "warm_cache": cached}


# ------------------------------------------------------------------------------------------- run
def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _lookup(rows: list[dict[str, Any]], n: int, method: str, threads: int, stat: str = "median_ms") -> float | None:
    for r in rows:
        if r["n"] == n and r["method"] == method and r["threads"] == threads:
            return r[stat]
    return None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _speedup(rows: list[dict[str, Any]], n: int, slow: str, fast: str, t: int, stat: str) -> float | None:
    return _ratio(_lookup(rows, n, slow, t, stat), _lookup(rows, n, fast, t, stat))


def _targets(rows: list[dict[str, Any]], sizes: Sequence[int], t: int) -> list[dict[str, Any]]:
    """The issue's targets on the median times (headline) and, for reference, on the min times."""
    wanted = [
        (f"zippy_numba vs cv2_hamming, N={n}", n, "cv2_hamming", "zippy_numba", TARGET_VS_CV2) for n in (2000, 5000)
    ]
    wanted.append(("zippy_numba vs torch_gemm, N=5000", 5000, "torch_gemm", "zippy_numba", TARGET_VS_GEMM))
    wanted += [
        (f"zippy_numpy vs cv2_hamming, N={n}", n, "cv2_hamming", "zippy_numpy", TARGET_NUMPY_VS_CV2) for n in sizes
    ]
    out = []
    for name, n, slow, fast, goal in wanted:
        if n not in sizes:
            continue
        med = _speedup(rows, n, slow, fast, t, "median_ms")
        low = _speedup(rows, n, slow, fast, t, "min_ms")
        out.append(
            {
                "target": f"{name} (x faster)",
                "threads": t,
                "value": med,
                "value_min_times": low,
                "goal": goal,
                "met": med is not None and med >= goal,
                "met_min_times": low is not None and low >= goal,
            }
        )
    return out


def _tables(rows: list[dict[str, Any]], conf: BenchMatcherConfig, methods: list[str]) -> str:
    from .results import markdown_table

    t0 = conf.threads[0]
    extra = list(conf.threads[1:])
    speedups = [
        ("numba vs cv2 Hamming", "cv2_hamming", "zippy_numba"),
        ("numba vs faiss", "faiss_binary", "zippy_numba"),
        ("numba vs torch GEMM", "torch_gemm", "zippy_numba"),
        ("numpy vs cv2 Hamming", "cv2_hamming", "zippy_numpy"),
    ]
    text = ""
    for stat, word in (("median_ms", "Median"), ("min_ms", "Minimum")):
        headers = ["N", *[f"{LABELS[m]} ms" for m in methods]]
        headers += [f"zippy numba {t} threads ms" for t in extra]
        headers += [label for label, _, _ in speedups]
        body = []
        for n in conf.sizes:
            line: list[Any] = [n, *[_lookup(rows, n, m, t0, stat) for m in methods]]
            line += [_lookup(rows, n, "zippy_numba", t, stat) for t in extra]
            line += [_speedup(rows, n, slow, fast, t0, stat) for _, slow, fast in speedups]
            body.append(line)
        fmts = ["d", *[".2f"] * (len(methods) + len(extra)), *[".1f"] * len(speedups)]
        text += (
            f"{word} ms per mutual-NN matching of N x N descriptors, {t0} thread(s); speed-ups are time ratios (x).\n\n"
        )
        text += markdown_table(headers, body, fmts) + "\n\n"
    for t in extra:
        body = [[n, *[_lookup(rows, n, m, t) for m in methods]] for n in conf.sizes]
        text += f"All methods with {t} threads (median ms):\n\n"
        text += markdown_table(["N", *[f"{LABELS[m]} ms" for m in methods]], body, ["d", *[".2f"] * len(methods)])
        text += "\n"
    return text


def run(conf: BenchMatcherConfig, output_dir: str | os.PathLike) -> Path:
    """Run the benchmark; writes summary.json, table.md and bench_matcher.png into ``output_dir``.

    Returns:
        Path of summary.json.
    """
    from .results import environment, markdown_table, write_json, write_text

    output_dir = Path(output_dir)
    skipped = {m: r for m in conf.methods if (r := _available(m)) is not None}
    methods = [m for m in conf.methods if m not in skipped]
    for m, reason in skipped.items():
        logger.warning("skipping %s: %s", m, reason)
    compile_info = None
    if conf.measure_compile and "zippy_numba" in methods:
        logger.info("measuring numba compile time (fresh processes, empty cache)")
        compile_info = _measure_compile(max(conf.threads))
    workers = []
    payload = {**asdict(conf), "methods": methods}
    for t in conf.threads:
        logger.info("worker with %d thread(s)", t)
        workers.append(_subprocess("bench", {**payload, "threads": t}, {k: str(t) for k in THREAD_ENV}))
    rows = [r for w in workers for r in w["rows"]]
    targets = _targets(rows, conf.sizes, conf.threads[0])
    table = _tables(rows, conf, methods)
    if compile_info is not None:
        cold, warm = compile_info["cold_cache"], compile_info["warm_cache"]
        table += (
            f"\nnumba first call (fresh process, {compile_info['threads']} threads allowed): "
            f"{cold['first_call_s']:.2f} s with an empty cache (+{cold['other_kernels_s']:.2f} s for the other "
            f"kernels), {warm['first_call_s']:.2f} s from the on-disk cache (import {warm['import_s']:.2f} s).\n"
        )
    table += f"\nTargets (issue #3, {conf.threads[0]} thread(s), one run; headline = medians):\n\n"
    table += markdown_table(
        ["target", "measured (medians)", "goal", "met", "measured (minima)", "met (minima)"],
        [
            [t["target"], t["value"], t["goal"], _yes(t["met"]), t["value_min_times"], _yes(t["met_min_times"])]
            for t in targets
        ],
        ["s", ".1f", ".1f", "s", ".1f", "s"],
    )
    table += "\n"
    for w in workers:
        checks = []
        for agree in w.get("agreement", []):
            same = [m for m in ("zippy_numpy", "cv2_hamming", "faiss_binary") if agree.get(m, {}).get("identical")]
            differ = [m for m in ("zippy_numpy", "cv2_hamming", "faiss_binary") if m in agree and m not in same]
            checks.append(
                f"N={agree['n']}: same pairs as {', '.join(same) or '-'}" + (f"; differ: {differ}" if differ else "")
            )
        table += f"\nMutual pairs vs zippy ({w['threads']} thr): " + "; ".join(checks) + ".\n"
    loads = ", ".join(
        f"{w['threads']} thr: {w['loadavg_before'][0]:.2f} -> {w['loadavg_after'][0]:.2f}" for w in workers
    )
    table += f"\nCPU: {_cpu_model()}; 1-min load average before -> after each worker: {loads}.\n"
    if skipped:
        table += f"Skipped: {skipped}\n"
    env = environment()
    summary = {
        "protocol": {
            **asdict(conf),
            "methods": methods,
            "descriptors": "256 bits, exactly 64 ones; half of set 2 = set 1 rows with 8 ones moved, shuffled",
            "float_descriptors": "float32 256-d standard normal, L2-normalised",
            "task": "mutual nearest neighbours of N x N (crossCheck), median of timed calls after a warm-up",
            "thread_env": list(THREAD_ENV),
        },
        "environment": {**env, "cpu_model": _cpu_model(), "numba": _version("numba"), "faiss": _version("faiss-cpu")},
        "compile": compile_info,
        "workers": [{k: v for k, v in w.items() if k != "rows"} for w in workers],
        "rows": rows,
        "targets": targets,
        "skipped": skipped,
    }
    path = write_json(output_dir / "summary.json", summary)
    write_text(output_dir / "table.md", table)
    _plot(rows, conf, methods, output_dir / "bench_matcher.png")
    return path


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (faiss logs on import)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _plot(rows: list[dict[str, Any]], conf: BenchMatcherConfig, methods: list[str], path: Path) -> None:
    """Left: time vs N (log-log) per method; right: speed-up of zippy numba over each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    t0 = conf.threads[0]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.8))
    for m in methods:
        ys = [_lookup(rows, n, m, t0) for n in conf.sizes]
        ax0.plot(conf.sizes, ys, marker="o", label=LABELS[m])
    for t in conf.threads[1:]:
        ys = [_lookup(rows, n, "zippy_numba", t) for n in conf.sizes]
        ax0.plot(conf.sizes, ys, marker="x", linestyle="--", color="black", label=f"zippy numba, {t} threads")
    ax0.set_xscale("log")
    ax0.set_yscale("log")
    ax0.set_xticks(list(conf.sizes), [str(n) for n in conf.sizes])
    ax0.minorticks_off()
    ax0.set_xlabel("N = M descriptors")
    ax0.set_ylabel("median ms (mutual NN)")
    ax0.set_title(f"matching time, {t0} thread(s)")
    ax0.grid(True, which="both", alpha=0.3)
    ax0.legend(fontsize=7)
    baselines = [m for m in methods if m not in ("zippy_numba",)]
    width = 0.8 / max(len(baselines), 1)
    x = np.arange(len(conf.sizes))
    top = 1.0
    for k, m in enumerate(baselines):
        sp = [_ratio(_lookup(rows, n, m, t0), _lookup(rows, n, "zippy_numba", t0)) or 0.0 for n in conf.sizes]
        ax1.bar(x + (k - (len(baselines) - 1) / 2) * width, sp, width, label=LABELS[m])
        top = max(top, *sp)
    ax1.axhline(TARGET_VS_CV2, color="gray", linestyle=":", linewidth=1)
    ax1.axhline(TARGET_VS_GEMM, color="gray", linestyle="--", linewidth=1)
    ax1.set_yscale("log")
    ax1.set_ylim(top=top * 20)  # room for the legend above the bars
    ax1.set_xticks(x, [str(n) for n in conf.sizes])
    ax1.set_xlabel("N = M descriptors")
    ax1.set_ylabel("time(baseline) / time(zippy numba)")
    ax1.set_title("speed-up of zippy numba (targets: 15x dotted, 20x dashed)")
    ax1.legend(fontsize=7, ncol=2, loc="upper center")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


# ------------------------------------------------------------------------------------------ main
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options (shared by ``zippy bench matcher`` and ``python -m zippy_eval.bench_matcher``)."""
    default = BenchMatcherConfig()
    parser.add_argument("--sizes", type=int, nargs="+", default=list(default.sizes), help="N = M values")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=list(default.threads), help="thread counts; the first is the headline"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(default.methods),
        choices=METHODS,
        metavar="METHOD",
        help=", ".join(METHODS),
    )
    parser.add_argument("--repeats", type=int, default=default.repeats, help="timed calls per measurement")
    parser.add_argument("--budget", type=float, default=default.budget_s, help="seconds per measurement at most")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--no-compile", action="store_true", help="skip the numba compile-time measurement")
    parser.add_argument("--tag", default="default", help="results go to OUTPUT/TAG (default 'default')")
    parser.add_argument(
        "--output", default="results/bench_matcher", help="results root (default results/bench_matcher)"
    )


def config_from_args(args: argparse.Namespace) -> tuple[BenchMatcherConfig, Path]:
    """The config and output folder described by parsed :func:`add_arguments` options."""
    if not args.tag or "/" in args.tag or args.tag in (".", ".."):
        raise ValueError(f"--tag must be a plain folder name, got {args.tag!r}")
    conf = BenchMatcherConfig(
        sizes=tuple(args.sizes),
        threads=tuple(args.threads),
        methods=tuple(args.methods),
        repeats=args.repeats,
        budget_s=args.budget,
        seed=args.seed,
        measure_compile=not args.no_compile,
    )
    return conf, Path(args.output) / args.tag


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m zippy_eval.bench_matcher`` (same options as ``zippy bench matcher``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if argv[:1] == ["--_worker"]:  # internal: one measurement process
        mode, payload, out = argv[1], json.loads(argv[2]), Path(argv[3])
        result = _compile_probe() if mode == "compile" else _worker(payload, int(payload["threads"]))
        from zippy_eval.results import write_text

        write_text(out, json.dumps(result))  # atomic: the parent never reads half a result
        return 0
    parser = argparse.ArgumentParser(description="benchmark of the bitwise matcher")
    add_arguments(parser)
    conf, output_dir = config_from_args(parser.parse_args(argv))
    path = run(conf, output_dir)
    from zippy_eval.results import print_results

    print_results(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
