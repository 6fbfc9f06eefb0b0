"""Benchmark of the bitwise matcher: mutual nearest neighbours of N x N descriptors, per method and thread count.

Descriptors are 256 bits with exactly 64 ones (as ZippyPoint's); half of the second set are noisy
copies of the first (8 of the 64 ones moved), the rest random, rows shuffled. Methods:

* ``zippy_native``: :func:`zippy.matching.match_hamming` (mutual) on the compiled kernels, the ISA this
  CPU gets by default (what users run); ``zippy_avx2``: the same kernels forced onto their AVX2 path
  (``ZIPPY_MATCHER_ISA=avx2``), i.e. what an AVX2-only CPU (Zen 3, Haswell and later) runs;
* ``zippy_numba`` / ``zippy_numpy``: the numba and numpy fallbacks of the same function;
* ``cv2_hamming``: ``cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match``;
* ``faiss_binary``: two ``faiss.IndexBinaryFlat`` searches (k = 1 both ways) + mutual check (if installed);
* ``simsimd``: ``simsimd.cdist(metric="hamming")`` distance matrix + argmin both ways + mutual check;
* ``torch_gemm``: float32 256-d L2-normalised descriptors, similarity GEMM + argmax both ways + mutual check;
* ``cv2_l2`` / ``zippy_l2`` (not run by default, slow at large N): ``cv2.BFMatcher(cv2.NORM_L2,
  crossCheck=True)`` and :func:`zippy.matching.match_l2` on the same float descriptors.

Every thread count runs in its own subprocess with ``OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS`` set before
any library starts, and also sets OpenCV / torch / faiss / simsimd / zippy threads, so all methods get
the same budget. Times are the median (and min) of up to ``repeats`` calls after one warm-up call; the
methods take turns call by call so that load changes hit all alike (a call longer than ``budget_s`` is
timed once). Speed-ups are ratios of times measured in the same run. Each worker also measures the
clock the cores ran at (a chain of dependent additions, ``zippy._hamming.spin``) to turn the kernels'
times into cycles per pair. Start-up: a fresh process imports ``zippy.matching`` and matches 1000 x 1000
(what a user waits for); numba's first call is measured in a fresh process with an empty cache
directory, then again with that cache filled (``--numba-compile``). ``--emulate-avx2`` runs every
measurement process as an AVX2-only CPU would (:data:`AVX2_ENV`); other environment variables such as
``ZIPPY_MATCHER_ISA`` pass through to the workers.

Writes ``results/bench_matcher/<tag>/``: ``summary.json`` (protocol, environment with CPU model and
flags, load average per worker, all timings, agreement checks, N^2 scaling, targets), ``table.md`` and
``bench_matcher.png``.

Usage::

    zippy bench matcher --tag default
    zippy bench matcher --tag avx2 --emulate-avx2    # as on an AVX2-only CPU (numba for Haswell, AVX2 kernels)
    python -m zippy_eval.bench_matcher --sizes 500 1000 2000 --threads 1
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
METHODS = (
    "zippy_native",
    "zippy_avx2",
    "zippy_numba",
    "zippy_numpy",
    "cv2_hamming",
    "faiss_binary",
    "simsimd",
    "torch_gemm",
    "cv2_l2",
    "zippy_l2",
)
DEFAULT_METHODS = tuple(m for m in METHODS if m not in ("cv2_l2", "zippy_l2"))
LABELS = {
    "zippy_native": "zippy native",
    "zippy_avx2": "zippy native AVX2",
    "zippy_numba": "zippy numba",
    "zippy_numpy": "zippy numpy fallback",
    "cv2_hamming": "cv2 BF Hamming crossCheck",
    "faiss_binary": "faiss IndexBinaryFlat mutual",
    "simsimd": "simsimd cdist hamming mutual",
    "torch_gemm": "torch GEMM f32 256-d mutual",
    "cv2_l2": "cv2 BF L2 crossCheck (f32 256-d)",
    "zippy_l2": "zippy match_l2 (f32 256-d)",
}
HAMMING = ("zippy_native", "zippy_avx2", "zippy_numba", "zippy_numpy", "cv2_hamming", "faiss_binary", "simsimd")
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
# targets, 1 thread, one run (issue #3 and issue #26)
TARGET_VS_CV2 = 15.0  # zippy (native, and its AVX2 path) >= 15x faster than cv2_hamming at N = 2000 and 5000
TARGET_VS_GEMM = 20.0  # zippy_native >= 20x faster than torch_gemm at N = 5000
TARGET_NUMPY_VS_CV2 = 1.0  # zippy_numpy no slower than cv2_hamming (every N)
TARGET_STARTUP_S = 0.5  # fresh process: import + first 1000 x 1000 match
# Throughput bounds of the compiled kernels from their instruction counts (256-bit descriptors; cycles per
# pair): AVX2 spends 6 vector ops per pair (per 32-bit word and 8 columns: 2 XOR, 2 VPSHUFB, 2 byte adds)
# on 4 vector ALU pipes (Zen 3 / Zen 4; VPSHUFB on 2 of them: 1 cycle), plus the reductions; AVX-512 spends
# 3 zmm ops (XOR, VPOPCNTD, add) per 16 pairs and word, at 2 zmm ops per cycle (Zen 4).
BOUND_CYCLES_PER_PAIR = {"avx2": 1.5, "avx512": 0.75}
# --emulate-avx2: what an AVX2-only CPU (Zen 3, Haswell .. Alder Lake) runs. NUMBA_CPU_NAME alone keeps the host's
# features (numba still emits AVX-512 VPOPCNTQ on an AVX-512 host): the feature list has to be given as well.
HASWELL_FEATURES = (
    "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+pclmul,+popcnt,"
    "+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave"
)
AVX2_ENV = {
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": HASWELL_FEATURES,
    "ZIPPY_MATCHER_ISA": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}


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
        measure_startup: time a fresh process's import + first 1000 x 1000 match.
        numba_compile: also time numba's first call in fresh processes with an empty, then a filled cache
            (minutes on a busy machine: the fallback's compile, not what users of the compiled kernels wait for).
        emulate_avx2: run every measurement process as on an AVX2-only CPU (:data:`AVX2_ENV`: numba compiles
            for Haswell, the compiled kernels take their AVX2 path, oneDNN stops at AVX2).
    """

    sizes: tuple[int, ...] = (500, 1000, 2000, 5000, 10000)
    threads: tuple[int, ...] = (1, 2)
    methods: tuple[str, ...] = DEFAULT_METHODS
    repeats: int = 15
    budget_s: float = 2.0
    seed: int = 0
    measure_startup: bool = True
    numba_compile: bool = False
    emulate_avx2: bool = False

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

    if name in ("zippy_native", "zippy_numba", "zippy_numpy"):
        backend = name.split("_")[1]
        kw = {"threads": threads} if backend != "numpy" else {}

        def run_zippy() -> set:
            p, _ = matching.match_hamming(a, b, mutual=True, backend=backend, **kw)
            return as_set(p[:, 0], p[:, 1])

        return run_zippy
    if name == "zippy_avx2":

        def run_avx2() -> set:
            old = os.environ.get(ISA_ENV)
            os.environ[ISA_ENV] = "avx2"  # read at every call (see zippy.matching.native_isa)
            try:
                p, _ = matching.match_hamming(a, b, mutual=True, backend="native", threads=threads)
            finally:
                if old is None:
                    del os.environ[ISA_ENV]
                else:
                    os.environ[ISA_ENV] = old
            return as_set(p[:, 0], p[:, 1])

        return run_avx2
    if name == "simsimd":
        import simsimd

        def run_simsimd() -> set:
            dist = np.asarray(simsimd.cdist(a, b, metric="hamming", dtype="bin8", out_dtype="uint32", threads=threads))
            r = dist.argmin(axis=1)  # first minimum, as BFMatcher
            c = dist.argmin(axis=0)
            rows = np.arange(a.shape[0])
            keep = c[r] == rows
            return as_set(rows[keep], r[keep])

        return run_simsimd
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


def _timing(wall_ms: list[float], cpu_ms: list[float]) -> dict[str, float]:
    """Median and minimum of the wall times and median of the CPU times of one method's calls (ms)."""
    return {
        "median_ms": float(np.median(wall_ms)),
        "min_ms": float(np.min(wall_ms)),
        "cpu_median_ms": float(np.median(cpu_ms)),
    }


def _time_interleaved(
    fns: dict[str, Callable[[], set]], repeats: int, budget_s: float
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, set]]:
    """Median-ready timings (ms) of several methods measured in alternating rounds.

    Each method is called once untimed (warm-up, also giving its result), then the methods take
    turns, one timed call each per round, so that a change of machine load hits all of them alike.
    A method stops after ``repeats`` calls or when it has used ``budget_s``; one whose warm-up call
    took longer than ``budget_s`` is timed by that call alone (its only run).

    Returns:
        (wall-clock ms, process CPU ms, results) per method. The CPU time of a single-threaded call
        excludes the time the process waited for a core (a shared machine), the wall time does not.
    """
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    spent: dict[str, float] = {}
    results: dict[str, set] = {}
    for name, fn in fns.items():
        t0, c0 = time.perf_counter(), time.process_time()
        results[name] = fn()
        first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
        times[name] = [first * 1e3] if first > budget_s else []
        cpu[name] = [first_cpu * 1e3] if first > budget_s else []
        spent[name] = first if first > budget_s else 0.0
    while True:
        active = [m for m in fns if len(times[m]) < repeats and spent[m] < budget_s]
        if not active:
            return times, cpu, results
        for name in active:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            times[name].append(dt * 1e3)
            cpu[name].append(dc * 1e3)
            spent[name] += dt


def _available(name: str) -> str | None:
    """None when the method can run here, else the reason."""
    import importlib.util

    need = {"faiss_binary": "faiss", "torch_gemm": "torch", "zippy_numba": "numba", "simsimd": "simsimd"}.get(name)
    if need and importlib.util.find_spec(need) is None:
        return f"{need} is not installed"
    if name in ("zippy_native", "zippy_avx2"):
        from zippy import matching

        if "native" not in matching.available_backends():
            return "the compiled kernels (zippy._hamming) are not built"
        if name == "zippy_avx2" and "avx2" not in matching._native_module().isas():
            return "this CPU has no AVX2"
    return None


ISA_ENV = "ZIPPY_MATCHER_ISA"


def _numba_target() -> str | None:
    """numba's code target in this process: CPU name, and whether its features include AVX-512."""
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        return None
    import llvmlite.binding as ll

    name = os.environ.get("NUMBA_CPU_NAME") or ll.get_host_cpu_name()
    features = os.environ.get("NUMBA_CPU_FEATURES") or ll.get_host_cpu_features().flatten()
    return f"{name} ({'with' if '+avx512f' in features else 'no'} AVX-512)"


def _clock_ghz(repeats: int = 30) -> float | None:
    """The core clock now (GHz): the fastest of ``repeats`` chains of 8e6 dependent additions (x86-64 only)."""
    import platform

    from zippy import matching

    mod = matching._native_module()
    if mod is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mod.spin(1_000_000)
        best = min(best, time.perf_counter() - t0)
    return 8e6 / best / 1e9


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
    warm = matching.warmup("numba", threads=threads) if "zippy_numba" in methods else 0.0
    out: dict[str, Any] = {
        "threads": threads,
        "loadavg_before": list(os.getloadavg()),
        "clock_ghz_before": _clock_ghz(),
        "native_isa": matching.native_isa(),
        "numba_target": _numba_target(),
        "numba_warmup_s": warm,
        "rows": [],
    }
    rng = np.random.default_rng(conf["seed"])
    for n in conf["sizes"]:
        a, b = _pair(rng, n)
        fa, fb = _float_pair(rng, n)
        fns = {name: _method_fns(name, a, b, fa, fb, threads) for name in methods}
        times, cpu, results = _time_interleaved(fns, conf["repeats"], conf["budget_s"])
        for name in methods:
            out["rows"].append(
                {
                    "n": n,
                    "method": name,
                    "threads": threads,
                    **_timing(times[name], cpu[name]),
                    "cpu_min_ms": float(np.min(cpu[name])),
                    "runs": len(times[name]),
                    "matches": len(results[name]),
                }
            )
            logger.info("threads=%d N=%d %-13s %9.2f ms", threads, n, name, np.median(times[name]))
        ref_name = next((m for m in HAMMING if m in results), None)
        agree: dict[str, Any] = {"n": n, "reference": ref_name}
        if ref_name is not None:
            ref = results[ref_name]
            for name in HAMMING:
                if name in results and name != ref_name:
                    union = len(ref | results[name]) or 1
                    agree[name] = {"identical": results[name] == ref, "jaccard": len(ref & results[name]) / union}
        out.setdefault("agreement", []).append(agree)
        if conf.get("extra", True) and n <= EXTRA_MAX_N:
            _time_extra(out, a, b, n, threads, methods, conf)
    out["loadavg_after"] = list(os.getloadavg())
    out["clock_ghz_after"] = _clock_ghz()
    return out


EXTRA_MAX_N = 5000  # knn / guided timings up to this N
GUIDED_RADIUS = 20.0  # px, keypoints spread over 640 x 480


def _extra_fns(a: np.ndarray, b: np.ndarray, n: int, threads: int, methods: list[str]) -> dict[str, Callable[[], set]]:
    """knn_hamming (k = 2) and match_guided per backend, with cv2's knnMatch(k = 2) as the baseline."""
    from zippy import matching

    rng = np.random.default_rng(n)
    k0 = rng.uniform(0, 1, (n, 2)) * [640, 480]
    k1 = rng.uniform(0, 1, (n, 2)) * [640, 480]

    def knn(backend: str, isa: str | None = None) -> Callable[[], set]:
        def fn() -> set:
            old = os.environ.get(ISA_ENV)
            if isa:
                os.environ[ISA_ENV] = isa
            try:
                idx, _ = matching.knn_hamming(a, b, 2, backend=backend, threads=threads)
            finally:
                if isa and old is None:
                    del os.environ[ISA_ENV]
                elif isa:
                    os.environ[ISA_ENV] = old
            return set(zip(range(n), map(tuple, idx.tolist())))

        return fn

    def guided(native: bool) -> Callable[[], set]:
        def fn() -> set:
            saved = matching._native
            if not native:
                matching._native = False  # the numpy path of match_guided
            try:
                p, _ = matching.match_guided(a, b, k0, k1, GUIDED_RADIUS)
            finally:
                matching._native = saved
            return set(map(tuple, p.tolist()))

        return fn

    def cv2_knn() -> set:
        import cv2

        ms = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a, b, k=2)
        return {(row[0].queryIdx, tuple(m.trainIdx for m in row)) for row in ms}

    fns: dict[str, Callable[[], set]] = {}
    if "zippy_native" in methods:
        fns["knn2_zippy_native"] = knn("native")
        fns["guided_zippy_native"] = guided(True)
    if "zippy_avx2" in methods:
        fns["knn2_zippy_avx2"] = knn("native", "avx2")
    if "zippy_numba" in methods:
        fns["knn2_zippy_numba"] = knn("numba")
    if "zippy_numpy" in methods:
        fns["knn2_zippy_numpy"] = knn("numpy")
        fns["guided_zippy_numpy"] = guided(False)
    if "cv2_hamming" in methods:
        fns["knn2_cv2"] = cv2_knn
    return fns


def _time_extra(out: dict[str, Any], a, b, n: int, threads: int, methods: list[str], conf: dict[str, Any]) -> None:
    fns = _extra_fns(a, b, n, threads, methods)
    if not fns:
        return
    times, cpu, results = _time_interleaved(fns, conf["repeats"], conf["budget_s"])
    for name in fns:
        out.setdefault("extra_rows", []).append(
            {
                "n": n,
                "method": name,
                "threads": threads,
                **_timing(times[name], cpu[name]),
                "results": len(results[name]),
            }
        )
    same = {}
    for kind in ("knn2", "guided"):
        names = [m for m in fns if m.startswith(kind)]
        if names:
            same[kind] = {m: results[m] == results[names[0]] for m in names[1:]}
    out.setdefault("extra_agreement", []).append({"n": n, **same})


STARTUP_CODE = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from zippy import matching
t1 = time.perf_counter()
rng = np.random.default_rng(0)
d0 = rng.integers(0, 256, (1000, 32), dtype=np.uint8)
d1 = rng.integers(0, 256, (1000, 32), dtype=np.uint8)
t2 = time.perf_counter()
matching.match_hamming(d0, d1)
t3 = time.perf_counter()
json.dump({"import_s": t1 - t0, "first_match_s": t3 - t2, "backend": matching.backend()}, sys.stdout)
"""


def _measure_startup(env: dict[str, str]) -> dict[str, Any]:
    """A user's fresh process: import numpy + zippy.matching, then one 1000 x 1000 match (default backend).

    ``before_first_match_s`` = import + first match measured inside the process; ``process_s`` adds the
    interpreter's own start (measured from outside).
    """
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP_CODE], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"start-up probe failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    out["before_first_match_s"] = out["import_s"] + out["first_match_s"]
    out["process_s"] = wall
    return out


def _compile_probe() -> dict[str, Any]:
    """Import and first-call times of the numba kernels (the fallback backend) in this (fresh) process."""
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


def _measure_compile(threads: int, extra_env: dict[str, str]) -> dict[str, Any]:
    env = {**extra_env, **{k: str(threads) for k in THREAD_ENV}}
    with tempfile.TemporaryDirectory(prefix="numba_cache_") as cache:
        env["NUMBA_CACHE_DIR"] = cache
        cold = _subprocess("compile", {}, env)
        cached = _subprocess("compile", {}, env)
    return {"threads": threads, "cold_cache": cold, "warm_cache": cached}


# ------------------------------------------------------------------------------------------- run
SIMD_FLAGS = ("popcnt", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512_bitalg", "asimd")


def _cpu_info() -> dict[str, Any]:
    """CPU model, all flags and the SIMD ones that matter here (from /proc/cpuinfo; None elsewhere)."""
    import platform

    model, flags = None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key == "model name" and model is None:
                model = line.split(":", 1)[1].strip()
            if key in ("flags", "Features") and flags is None:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return {
        "model": model,
        "machine": platform.machine(),
        "simd_flags": [f for f in SIMD_FLAGS if flags and f in flags],
        "flags": flags,
    }


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
    """The issues' targets on the median times (headline) and, for reference, on the min times."""
    wanted = [("zippy_avx2 vs cv2_hamming, N=2000", 2000, "cv2_hamming", "zippy_avx2", TARGET_VS_CV2)]
    wanted += [
        (f"zippy_native vs cv2_hamming, N={n}", n, "cv2_hamming", "zippy_native", TARGET_VS_CV2) for n in (2000, 5000)
    ]
    wanted.append(("zippy_native vs torch_gemm, N=5000", 5000, "torch_gemm", "zippy_native", TARGET_VS_GEMM))
    wanted += [
        (f"zippy_numpy vs cv2_hamming, N={n}", n, "cv2_hamming", "zippy_numpy", TARGET_NUMPY_VS_CV2) for n in sizes
    ]
    out = []
    for name, n, slow, fast, goal in wanted:
        if n not in sizes:
            continue
        med = _speedup(rows, n, slow, fast, t, "median_ms")
        low = _speedup(rows, n, slow, fast, t, "min_ms")
        if med is None:
            continue
        out.append(
            {
                "target": f"{name} (x faster)",
                "threads": t,
                "value": med,
                "value_min_times": low,
                "goal": goal,
                "met": med >= goal,
                "met_min_times": low is not None and low >= goal,
            }
        )
    return out


def _scaling(rows: list[dict[str, Any]], sizes: Sequence[int], threads: Sequence[int], methods: list[str]):
    """t(N_max) / t(2000) per method and thread count, against the N^2 ratio (exact brute force scales as N^2)."""
    if 2000 not in sizes or max(sizes) <= 2000:
        return []
    big = max(sizes)
    out = []
    for t in threads:
        for m in methods:
            small, large = _lookup(rows, 2000, m, t), _lookup(rows, big, m, t)
            r = _ratio(large, small)
            if r is not None:
                cpu = _ratio(_lookup(rows, big, m, t, "cpu_median_ms"), _lookup(rows, 2000, m, t, "cpu_median_ms"))
                out.append(
                    {
                        "method": m,
                        "threads": t,
                        "n_small": 2000,
                        "n_large": big,
                        "ratio": r,
                        "ratio_cpu_time": cpu,
                        "n2_ratio": (big / 2000) ** 2,
                    }
                )
    return out


def _cycles(rows: list[dict[str, Any]], workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cycles per descriptor pair of the compiled kernels: median time x the clock measured by the worker."""
    out = []
    for w in workers:
        clocks = [c for c in (w.get("clock_ghz_before"), w.get("clock_ghz_after")) if c]
        if not clocks:
            continue
        ghz = float(np.mean(clocks))
        for r in w["rows"]:
            isa = {"zippy_native": w.get("native_isa"), "zippy_avx2": "avx2"}.get(r["method"])
            if isa is None:
                continue
            cyc = r["median_ms"] * 1e-3 * ghz * 1e9 * r["threads"] / (r["n"] * r["n"])
            cyc_min = r["min_ms"] * 1e-3 * ghz * 1e9 * r["threads"] / (r["n"] * r["n"])
            cyc_cpu = r["cpu_median_ms"] * 1e-3 * ghz * 1e9 / (r["n"] * r["n"]) if "cpu_median_ms" in r else None
            bound = BOUND_CYCLES_PER_PAIR.get(isa)
            out.append(
                {
                    "method": r["method"],
                    "isa": isa,
                    "n": r["n"],
                    "threads": r["threads"],
                    "clock_ghz": ghz,
                    "cycles_per_pair": cyc,
                    "cycles_per_pair_min_time": cyc_min,
                    "bound_cycles_per_pair": bound,
                    "fraction_of_bound": bound / cyc if bound else None,
                    "fraction_of_bound_min_time": bound / cyc_min if bound else None,
                    "cycles_per_pair_cpu_time": cyc_cpu,
                    "fraction_of_bound_cpu_time": bound / cyc_cpu if bound and cyc_cpu else None,
                }
            )
    return out


def _tables(rows: list[dict[str, Any]], conf: BenchMatcherConfig, methods: list[str]) -> str:
    from .results import markdown_table

    t0 = conf.threads[0]
    ours = "zippy_native" if "zippy_native" in methods else "zippy_numba"
    speedups = [(f"{LABELS[ours]} vs {LABELS[m]}", m, ours) for m in methods if m != ours]
    if "zippy_avx2" in methods and ours != "zippy_avx2":
        speedups.insert(0, ("zippy native AVX2 vs cv2 BF Hamming", "cv2_hamming", "zippy_avx2"))
    if "zippy_numpy" in methods:
        speedups.append(("zippy numpy vs cv2 BF Hamming", "cv2_hamming", "zippy_numpy"))
    speedups = [s for s in speedups if s[1] in methods and s[1] != s[2]]
    text = ""
    for stat, word in (("median_ms", "Median"), ("min_ms", "Minimum")):
        body = [[n, *[_lookup(rows, n, m, t0, stat) for m in methods]] for n in conf.sizes]
        text += f"{word} ms per mutual-NN matching of N x N descriptors, {t0} thread(s):\n\n"
        text += markdown_table(["N", *[LABELS[m] for m in methods]], body, ["d", *[".2f"] * len(methods)]) + "\n\n"
    body = [[n, *[_speedup(rows, n, slow, fast, t0, "median_ms") for _, slow, fast in speedups]] for n in conf.sizes]
    text += f"Speed-ups (x, ratios of medians from this run), {t0} thread(s):\n\n"
    text += markdown_table(["N", *[label for label, _, _ in speedups]], body, ["d", *[".1f"] * len(speedups)]) + "\n\n"
    for t in conf.threads[1:]:
        body = [[n, *[_lookup(rows, n, m, t) for m in methods]] for n in conf.sizes]
        text += f"All methods with {t} threads (median ms):\n\n"
        text += markdown_table(["N", *[LABELS[m] for m in methods]], body, ["d", *[".2f"] * len(methods)])
        text += "\n\n"
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
    startup = compile_info = None
    if conf.measure_startup:
        logger.info("measuring the start-up of a fresh process (import + first 1000 x 1000 match)")
        startup = _measure_startup(AVX2_ENV if conf.emulate_avx2 else {})
    if conf.numba_compile and "zippy_numba" in methods:
        logger.info("measuring numba compile time (fresh processes, empty cache)")
        compile_info = _measure_compile(max(conf.threads), AVX2_ENV if conf.emulate_avx2 else {})
    workers = []
    payload = {**asdict(conf), "methods": methods}
    for t in conf.threads:
        logger.info("worker with %d thread(s)", t)
        env = {**(AVX2_ENV if conf.emulate_avx2 else {}), **{k: str(t) for k in THREAD_ENV}}
        workers.append(_subprocess("bench", {**payload, "threads": t}, env))
    rows = [r for w in workers for r in w["rows"]]
    targets = _targets(rows, conf.sizes, conf.threads[0])
    if startup is not None:
        s = startup["before_first_match_s"]
        targets.append(
            {
                "target": "fresh process: import + first 1000 x 1000 match (s)",
                "threads": 1,
                "value": s,
                "value_min_times": None,
                "goal": TARGET_STARTUP_S,
                "met": s <= TARGET_STARTUP_S,
                "met_min_times": None,
            }
        )
    extra_rows = [r for w in workers for r in w.get("extra_rows", [])]
    scaling = _scaling(rows, conf.sizes, conf.threads, methods)
    cycles = _cycles(rows, workers)
    table = _tables(rows, conf, methods)
    if extra_rows:
        names = list(dict.fromkeys(r["method"] for r in extra_rows))
        sizes = sorted({r["n"] for r in extra_rows})
        t0 = conf.threads[0]
        body = [[n, *[_lookup(extra_rows, n, m, t0) for m in names]] for n in sizes]
        table += (
            f"knn_hamming (k = 2; cv2: BFMatcher.knnMatch k = 2) and match_guided (radius {GUIDED_RADIUS:g} px, "
            f"keypoints uniform over 640 x 480; numpy = the path without the compiled kernels), median ms, {t0} "
            "thread(s):\n\n"
        )
        table += markdown_table(["N", *names], body, ["d", *[".2f"] * len(names)]) + "\n\n"
        for w in workers:
            for agree in w.get("extra_agreement", []):
                bad = [m for kind in ("knn2", "guided") for m, ok in agree.get(kind, {}).items() if not ok]
                if bad:
                    table += f"DIFFERENT results ({w['threads']} thr, N={agree['n']}): {bad}\n"
    if scaling:
        big = scaling[0]["n_large"]
        text_rows = [
            [
                "1 (CPU time)",
                *[
                    next((s["ratio_cpu_time"] for s in scaling if s["method"] == m and s["threads"] == 1), None)
                    for m in methods
                ],
            ]
        ]
        for t in conf.threads:
            text_rows.append(
                [
                    f"{t} (wall)",
                    *[
                        next((s["ratio"] for s in scaling if s["method"] == m and s["threads"] == t), None)
                        for m in methods
                    ],
                ]
            )
        n2 = (big / 2000) ** 2
        table += f"Scaling: median time at N = {big} / at N = 2000 (exact brute force: N^2 ratio = {n2:.0f}):\n\n"
        table += markdown_table(["threads", *[LABELS[m] for m in methods]], text_rows, ["s", *[".1f"] * len(methods)])
        table += "\n\n"
    if cycles:
        table += (
            "Compiled kernels, 1 thread: cycles per descriptor pair = time x clock / N^2, from the median wall "
            "time, the fastest call and the median CPU time (the clock is measured by each worker); bound from "
            "instruction counts: "
            + ", ".join(f"{k} {v:.2f}" for k, v in BOUND_CYCLES_PER_PAIR.items())
            + " cycles per pair (see eval/bench_matcher.py):\n\n"
        )
        one = [c for c in cycles if c["threads"] == 1]
        table += markdown_table(
            ["method", "ISA", "N", "GHz", "median", "of bound", "fastest", "of bound", "CPU time", "of bound"],
            [
                [
                    c["method"],
                    c["isa"],
                    c["n"],
                    c["clock_ghz"],
                    c["cycles_per_pair"],
                    c["fraction_of_bound"],
                    c["cycles_per_pair_min_time"],
                    c["fraction_of_bound_min_time"],
                    c["cycles_per_pair_cpu_time"],
                    c["fraction_of_bound_cpu_time"],
                ]
                for c in one
            ],
            ["s", "s", "d", ".2f", ".2f", ".0%", ".2f", ".0%", ".2f", ".0%"],
        )
        table += "\n\n"
    if startup is not None:
        table += (
            f"Fresh process ({startup['backend']}): import numpy + zippy.matching {startup['import_s']:.3f} s, first "
            f"1000 x 1000 match {1e3 * startup['first_match_s']:.1f} ms: {startup['before_first_match_s']:.3f} s "
            f"before the first match ({startup['process_s']:.2f} s for the whole process).\n"
        )
    if compile_info is not None:
        cold, warm = compile_info["cold_cache"], compile_info["warm_cache"]
        table += (
            f"numba fallback, first call (fresh process, {compile_info['threads']} threads allowed): "
            f"{cold['first_call_s']:.2f} s with an empty cache (+{cold['other_kernels_s']:.2f} s for the other "
            f"kernels), {warm['first_call_s']:.2f} s from the on-disk cache (import {warm['import_s']:.2f} s).\n"
        )
    table += f"\nTargets ({conf.threads[0]} thread(s), one run; headline = medians):\n\n"
    table += markdown_table(
        ["target", "measured (medians)", "goal", "met", "measured (minima)", "met (minima)"],
        [
            [t["target"], t["value"], t["goal"], _yes(t["met"]), t["value_min_times"], _yes(t["met_min_times"], "-")]
            for t in targets
        ],
        ["s", ".2f", ".2f", "s", ".2f", "s"],
    )
    table += "\n"
    for w in workers:
        checks = []
        for agree in w.get("agreement", []):
            others = [m for m in HAMMING if m in agree]
            same = [m for m in others if agree[m]["identical"]]
            differ = [m for m in others if not agree[m]["identical"]]
            checks.append(
                f"N={agree['n']}: {agree['reference']} = {', '.join(same) or '-'}"
                + (f"; differ: {differ}" if differ else "")
            )
        table += f"\nIdentical mutual pairs ({w['threads']} thr): " + "; ".join(checks) + ".\n"
    loads = ", ".join(
        f"{w['threads']} thr: {w['loadavg_before'][0]:.2f} -> {w['loadavg_after'][0]:.2f}" for w in workers
    )
    cpu = _cpu_info()
    table += (
        f"\nCPU: {cpu['model']} ({os.cpu_count()} logical CPUs; SIMD: {' '.join(cpu['simd_flags'])}); native ISA "
        f"{workers[0].get('native_isa')}; numba target {workers[0].get('numba_target')}"
        f"{' (--emulate-avx2)' if conf.emulate_avx2 else ''}; "
        f"1-min load average before -> after each worker: {loads}.\n"
    )
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
            "emulate_avx2_env": AVX2_ENV if conf.emulate_avx2 else None,
            "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME"),
            "zippy_matcher_isa_env": os.environ.get(ISA_ENV),
        },
        "environment": {
            **env,
            "cpu": cpu,
            "cpu_model": cpu["model"],
            "numba": _version("numba"),
            "faiss": _version("faiss-cpu"),
            "simsimd": _version("simsimd"),
        },
        "startup": startup,
        "compile": compile_info,
        "workers": [{k: v for k, v in w.items() if k != "rows"} for w in workers],
        "rows": rows,
        "extra_rows": extra_rows,
        "scaling": scaling,
        "cycles": cycles,
        "bound_cycles_per_pair": BOUND_CYCLES_PER_PAIR,
        "targets": targets,
        "skipped": skipped,
    }
    path = write_json(output_dir / "summary.json", summary)
    write_text(output_dir / "table.md", table)
    _plot(rows, conf, methods, output_dir / "bench_matcher.png")
    return path


def _yes(flag: bool | None, none: str = "NO") -> str:
    return none if flag is None else "yes" if flag else "NO"


def _version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (faiss logs on import)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _plot(rows: list[dict[str, Any]], conf: BenchMatcherConfig, methods: list[str], path: Path) -> None:
    """Left: time vs N (log-log) per method; right: speed-up of zippy (native, else numba) over each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    t0 = conf.threads[0]
    ours = "zippy_native" if "zippy_native" in methods else "zippy_numba"
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.8))
    for m in methods:
        ys = [_lookup(rows, n, m, t0) for n in conf.sizes]
        ax0.plot(conf.sizes, ys, marker="o", label=LABELS[m])
    for t in conf.threads[1:]:
        ys = [_lookup(rows, n, ours, t) for n in conf.sizes]
        ax0.plot(conf.sizes, ys, marker="x", linestyle="--", color="black", label=f"{LABELS[ours]}, {t} threads")
    ax0.set_xscale("log")
    ax0.set_yscale("log")
    ax0.set_xticks(list(conf.sizes), [str(n) for n in conf.sizes])
    ax0.minorticks_off()
    ax0.set_xlabel("N = M descriptors")
    ax0.set_ylabel("median ms (mutual NN)")
    ax0.set_title(f"matching time, {t0} thread(s)")
    ax0.grid(True, which="both", alpha=0.3)
    ax0.legend(fontsize=7)
    baselines = [m for m in methods if m != ours]
    width = 0.8 / max(len(baselines), 1)
    x = np.arange(len(conf.sizes))
    top = 1.0
    for k, m in enumerate(baselines):
        sp = [_ratio(_lookup(rows, n, m, t0), _lookup(rows, n, ours, t0)) or 0.0 for n in conf.sizes]
        ax1.bar(x + (k - (len(baselines) - 1) / 2) * width, sp, width, label=LABELS[m])
        top = max(top, *sp)
    ax1.axhline(TARGET_VS_CV2, color="gray", linestyle=":", linewidth=1)
    ax1.axhline(TARGET_VS_GEMM, color="gray", linestyle="--", linewidth=1)
    ax1.set_yscale("log")
    ax1.set_ylim(top=top * 20)  # room for the legend above the bars
    ax1.set_xticks(x, [str(n) for n in conf.sizes])
    ax1.set_xlabel("N = M descriptors")
    ax1.set_ylabel(f"time(baseline) / time({LABELS[ours]})")
    ax1.set_title(f"speed-up of {LABELS[ours]} (targets: 15x dotted, 20x dashed)")
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
    parser.add_argument("--no-startup", action="store_true", help="skip timing a fresh process's import + first match")
    parser.add_argument(
        "--numba-compile", action="store_true", help="also time numba's first call with an empty cache (slow)"
    )
    parser.add_argument(
        "--emulate-avx2",
        action="store_true",
        help="measure as on an AVX2-only CPU (numba for Haswell, ZIPPY_MATCHER_ISA=avx2, oneDNN AVX2)",
    )
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
        measure_startup=not args.no_startup,
        numba_compile=args.numba_compile,
        emulate_avx2=args.emulate_avx2,
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
