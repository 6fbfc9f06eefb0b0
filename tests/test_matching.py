"""Tests of zippy.matching: hand-computed cases, OpenCV BFMatcher equivalence, backends, guided matching."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zippy import matching as M

HAS_NUMBA = "numba" in M.available_backends()
BACKENDS = M.available_backends()
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")

# D = [[5, 0, 3], [1, 4, 7], [7, 4, 1]] (worked out bit by bit below)
D0 = np.array([[0b0000_0000], [0b1111_0000], [0b0000_1111]], np.uint8)
D1 = np.array([[0b1111_0001], [0b0000_0000], [0b0000_0111]], np.uint8)


def _brute(d0: np.ndarray, d1: np.ndarray) -> np.ndarray:
    return np.unpackbits(d0[:, None] ^ d1[None], axis=-1).sum(-1)


def _cv2_reference(d0, d1, mutual, ratio, max_distance, norm=cv2.NORM_HAMMING):
    """Our semantics spelled out with cv2.BFMatcher: crossCheck for mutual, knnMatch(k=2) + ratio."""
    if len(d0) == 0 or len(d1) == 0:
        return set()
    keep = {(m.queryIdx, m.trainIdx) for m in cv2.BFMatcher(norm, crossCheck=mutual).match(d0, d1)}
    for ms in cv2.BFMatcher(norm).knnMatch(d0, d1, k=2):
        best = (ms[0].queryIdx, ms[0].trainIdx)
        if ratio is not None and len(ms) == 2 and not ms[0].distance < ratio * ms[1].distance:
            keep.discard(best)
        if max_distance is not None and not ms[0].distance <= max_distance:
            keep.discard(best)
    return keep


def _as_set(pairs: np.ndarray) -> set:
    return set(map(tuple, pairs.tolist()))


@st.composite
def descriptor_pairs(draw, max_n=12):
    """Two descriptor sets over a tiny alphabet (values 0..levels-1 per byte): many tied distances."""
    n0 = draw(st.integers(0, max_n))
    n1 = draw(st.integers(0, max_n))
    width = draw(st.integers(1, 5))
    levels = draw(st.sampled_from([2, 4, 256]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    d0 = rng.integers(0, levels, (n0, width)).astype(np.uint8)
    d1 = rng.integers(0, levels, (n1, width)).astype(np.uint8)
    return d0, d1


# ---------------------------------------------------------------------------------- hand-computed
def test_hand_computed_distances():
    # 0x00 vs 0xF1, 0x00, 0x07 -> 5, 0, 3 ; 0xF0 -> 1, 4, 7 ; 0x0F -> 7, 4, 1
    assert M.hamming_distances(D0, D1).tolist() == [[5, 0, 3], [1, 4, 7], [7, 4, 1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_matches(backend):
    pairs, dist = M.match_hamming(D0, D1, backend=backend)
    assert pairs.dtype == np.int64 and pairs.shape == (3, 2)
    assert pairs.tolist() == [[0, 1], [1, 0], [2, 2]]
    assert dist.tolist() == [0, 1, 1]
    # ratio 0.25: row 0 keeps 0 < 0.75; rows 1 and 2 fail 1 < 0.25 * 4 (strict)
    pairs, dist = M.match_hamming(D0, D1, ratio=0.25, backend=backend)
    assert pairs.tolist() == [[0, 1]] and dist.tolist() == [0]
    pairs, _ = M.match_hamming(D0, D1, ratio=0.5, backend=backend)
    assert pairs.tolist() == [[0, 1], [1, 0], [2, 2]]
    pairs, _ = M.match_hamming(D0, D1, max_distance=0, backend=backend)
    assert pairs.tolist() == [[0, 1]]
    pairs, _ = M.match_hamming(D0, D1, max_distance=1, backend=backend)  # inclusive
    assert pairs.tolist() == [[0, 1], [1, 0], [2, 2]]
    idx, dist = M.knn_hamming(D0, D1, k=2, backend=backend)
    assert idx.tolist() == [[1, 2], [0, 1], [2, 1]] and dist.tolist() == [[0, 3], [1, 4], [1, 4]]
    idx, dist = M.knn_hamming(D0, D1, k=4, max_distance=3, backend=backend)
    assert idx.tolist() == [[1, 2, -1, -1], [0, -1, -1, -1], [2, -1, -1, -1]]
    assert dist.tolist() == [[0, 3, -1, -1], [1, -1, -1, -1], [1, -1, -1, -1]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_first_index_wins(backend):
    d0 = np.array([[0x00]], np.uint8)
    d1 = np.array([[0x01], [0x02], [0x00], [0x00]], np.uint8)  # distances 1, 1, 0, 0
    pairs, dist = M.match_hamming(d0, d1, backend=backend)
    assert pairs.tolist() == [[0, 2]] and dist.tolist() == [0]
    # two identical rows compete for one column: the first row wins the mutual check
    d0 = np.array([[0x03], [0x03]], np.uint8)
    d1 = np.array([[0x03]], np.uint8)
    assert M.match_hamming(d0, d1, backend=backend)[0].tolist() == [[0, 0]]
    assert M.match_hamming(d0, d1, mutual=False, backend=backend)[0].tolist() == [[0, 0], [1, 0]]
    # equal best and second-best distance fails any ratio <= 1
    d1 = np.array([[0x01], [0x02]], np.uint8)
    assert M.match_hamming(np.array([[0x00]], np.uint8), d1, ratio=1.0, backend=backend)[0].shape == (0, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_candidate_passes_ratio(backend):
    pairs, _ = M.match_hamming(D0, D1[:1], mutual=False, ratio=0.1, backend=backend)
    assert pairs.tolist() == [[0, 0], [1, 0], [2, 0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    e = np.zeros((0, 32), np.uint8)
    x = np.zeros((3, 32), np.uint8)
    for a, b in ((e, x), (x, e), (e, e)):
        pairs, dist = M.match_hamming(a, b, ratio=0.8, backend=backend)
        assert pairs.shape == (0, 2) and pairs.dtype == np.int64 and dist.shape == (0,)
    idx, dist = M.knn_hamming(x, e, k=2, backend=backend)
    assert idx.tolist() == [[-1, -1]] * 3 and dist.tolist() == [[-1, -1]] * 3
    assert M.knn_hamming(e, x, k=3, backend=backend)[0].shape == (0, 3)


def test_matches0_round_trip():
    pairs = np.array([[0, 4], [2, 1]], np.int64)
    m0 = M.matches_to_matches0(pairs, 4)
    assert m0.dtype == np.int64 and m0.tolist() == [4, -1, 1, -1]
    assert M.matches0_to_matches(m0).tolist() == pairs.tolist()
    assert M.matches_to_matches0(np.zeros((0, 2), np.int64), 2).tolist() == [-1, -1]
    with pytest.raises(ValueError, match="more than once"):
        M.matches_to_matches0(np.array([[0, 1], [0, 2]]), 3)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        M.matches_to_matches0(np.array([[2, 1]]), 2)


# ------------------------------------------------------------------------------------ vs OpenCV
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=descriptor_pairs(),
    mutual=st.booleans(),
    ratio=st.sampled_from([None, 0.5, 0.8, 1.0]),
    max_distance=st.sampled_from([None, 0, 3, 8]),
)
def test_equals_cv2_bfmatcher(data, mutual, ratio, max_distance):
    d0, d1 = data
    expected = _cv2_reference(d0, d1, mutual, ratio, max_distance)
    brute = _brute(d0, d1) if d0.size and d1.size else None
    for backend in BACKENDS:
        pairs, dist = M.match_hamming(d0, d1, mutual=mutual, ratio=ratio, max_distance=max_distance, backend=backend)
        assert _as_set(pairs) == expected
        assert np.all(np.diff(pairs[:, 0]) > 0)
        if len(pairs):
            assert dist.tolist() == brute[pairs[:, 0], pairs[:, 1]].tolist()


@settings(max_examples=60, deadline=None)
@given(data=descriptor_pairs(), k=st.integers(1, 4))
def test_knn_equals_cv2_knnmatch(data, k):
    d0, d1 = data
    if len(d0) == 0 or len(d1) == 0:
        return
    ref = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(d0, d1, k=k)
    for backend in BACKENDS:
        idx, dist = M.knn_hamming(d0, d1, k, backend=backend)
        assert idx.shape == (len(d0), k) and idx.dtype == np.int64 and dist.dtype == np.int32
        for i, ms in enumerate(ref):
            assert idx[i, : len(ms)].tolist() == [m.trainIdx for m in ms]
            assert dist[i, : len(ms)].tolist() == [int(m.distance) for m in ms]
            assert (idx[i, len(ms) :] == -1).all()


@settings(max_examples=80, deadline=None)
@given(data=descriptor_pairs(), mutual=st.booleans(), ratio=st.sampled_from([None, 0.7, 1.0]))
def test_l2_equals_cv2_on_integer_floats(data, mutual, ratio):
    """Small-integer floats make every distance exact in both implementations, ties included."""
    d0, d1 = (d.astype(np.float32) for d in data)
    pairs, dist = M.match_l2(d0, d1, mutual=mutual, ratio=ratio)
    assert _as_set(pairs) == _cv2_reference(d0, d1, mutual, ratio, None, norm=cv2.NORM_L2)
    assert dist.dtype == np.float32
    if len(pairs):
        exact = np.linalg.norm(d0[pairs[:, 0]] - d1[pairs[:, 1]], axis=1)
        np.testing.assert_allclose(dist, exact, rtol=1e-6)


def test_knn_l2_order_and_padding():
    d1 = np.array([[0.0], [2.0], [1.0], [1.0]], np.float32)
    idx, dist = M.knn_l2(np.array([[0.0]], np.float32), d1, k=3)
    assert idx.tolist() == [[0, 2, 3]] and dist.tolist() == [[0.0, 1.0, 1.0]]
    idx, dist = M.knn_l2(np.array([[0.0]], np.float32), d1[:2], k=3, max_distance=1.5)
    assert idx.tolist() == [[0, -1, -1]] and dist[0, 0] == 0 and np.isinf(dist[0, 1:]).all()


# ----------------------------------------------------------------------------- backends, threads
def _tied_and_random(rng, n0, n1, width):
    tied = rng.integers(0, 3, (n0, width)).astype(np.uint8), rng.integers(0, 3, (n1, width)).astype(np.uint8)
    rand = rng.integers(0, 256, (n0, width), dtype=np.uint8), rng.integers(0, 256, (n1, width), dtype=np.uint8)
    return [tied, rand]


@needs_numba
@pytest.mark.parametrize("width", [32, 61, 64, 7])
def test_numba_and_numpy_identical(width):
    rng = np.random.default_rng(width)
    for d0, d1 in _tied_and_random(rng, 700, 1500, width):
        for opts in ({}, {"mutual": False}, {"ratio": 0.9}, {"ratio": 1.0, "max_distance": 40}):
            a = M.match_hamming(d0, d1, backend="numba", threads=1, **opts)
            b = M.match_hamming(d0, d1, backend="numpy", **opts)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
            assert a[1].dtype == b[1].dtype == np.int32
        a = M.knn_hamming(d0, d1, 5, backend="numba")
        b = M.knn_hamming(d0, d1, 5, backend="numpy")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
def test_results_independent_of_threads(backend):
    if backend == "numba":
        import numba

        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("NUMBA_NUM_THREADS < 2")
    rng = np.random.default_rng(3)
    for d0, d1 in _tied_and_random(rng, 1100, 900, 32):
        one = M.match_hamming(d0, d1, ratio=0.95, threads=1, backend=backend)
        for t in (2, 3):
            if backend == "numba" and t > M.max_num_threads():
                continue
            many = M.match_hamming(d0, d1, ratio=0.95, threads=t, backend=backend)
            assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])
            k1, kt = M.knn_hamming(d0, d1, 3, threads=1, backend=backend), M.knn_hamming(d0, d1, 3, threads=t)
            assert np.array_equal(k1[0], kt[0]) and np.array_equal(k1[1], kt[1])
    if backend == "numba":
        with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
            M.match_hamming(d0, d1, threads=M.max_num_threads() + 1, backend="numba")


# --------------------------------------------------------------------------- native: every ISA
NATIVE_ISAS = M._native_module().isas() if "native" in BACKENDS else ()
needs_native = pytest.mark.skipif(
    "native" not in BACKENDS, reason="the compiled kernels (zippy._hamming) are not built"
)


@needs_native
@pytest.mark.parametrize("isa", NATIVE_ISAS)
@pytest.mark.parametrize(
    ("n0", "n1", "width"), [(13, 29, 32), (701, 2101, 32), (67, 300, 7), (50, 90, 61), (9, 40, 96)]
)
def test_native_isa_equals_numpy_and_cv2(monkeypatch, isa, n0, n1, width):
    """Each compiled path, forced through ZIPPY_MATCHER_ISA: tiles of 4 rows with a remainder, column groups
    with padded lanes, more columns than one packed block (2048), widths that are no multiple of 4 bytes."""
    monkeypatch.setenv("ZIPPY_MATCHER_ISA", isa)
    assert M.native_isa() == isa and M.backend() == f"native ({isa})"
    rng = np.random.default_rng(n0 + width)
    for d0, d1 in _tied_and_random(rng, n0, n1, width):
        for opts in ({}, {"mutual": False}, {"ratio": 0.9}, {"ratio": 1.0, "max_distance": 40}):
            a = M.match_hamming(d0, d1, backend="native", **opts)
            b = M.match_hamming(d0, d1, backend="numpy", **opts)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), opts
        assert _as_set(M.match_hamming(d0, d1, backend="native")[0]) == _cv2_reference(d0, d1, True, None, None)
        a = M.knn_hamming(d0, d1, 5, backend="native")
        b = M.knn_hamming(d0, d1, 5, backend="numpy")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        ms = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(d0, d1, k=5)
        assert a[0].tolist() == [[m.trainIdx for m in row] + [-1] * (5 - len(row)) for row in ms]


@needs_native
def test_native_isa_choice(monkeypatch):
    monkeypatch.delenv("ZIPPY_MATCHER_ISA", raising=False)
    assert M.native_isa() == NATIVE_ISAS[0] and NATIVE_ISAS[-1] == "generic"
    monkeypatch.setenv("ZIPPY_MATCHER_ISA", "sse9")
    with pytest.raises(ValueError, match=r"ZIPPY_MATCHER_ISA='sse9'.*supports"):
        M.match_hamming(D0, D1)
    monkeypatch.setenv("ZIPPY_MATCHER_ISA", "auto")
    assert M.native_isa() == NATIVE_ISAS[0]
    assert M.warmup("native") == 0.0  # nothing to compile


@needs_native
@pytest.mark.parametrize("isa", NATIVE_ISAS)
def test_native_guided_equals_numpy_path(monkeypatch, isa):
    monkeypatch.setenv("ZIPPY_MATCHER_ISA", isa)
    rng = np.random.default_rng(8)
    for d0, d1 in _tied_and_random(rng, 300, 400, 32):
        pred, kpts = rng.uniform(0, 200, (300, 2)).round(), rng.uniform(0, 200, (400, 2)).round()
        for opts in ({}, {"ratio": 0.9, "mutual": False}, {"max_distance": 100}):
            native = M.match_guided(d0, d1, pred, kpts, 25.0, **opts)
            monkeypatch.setattr(M, "_native", False)
            ref = M.match_guided(d0, d1, pred, kpts, 25.0, **opts)
            monkeypatch.setattr(M, "_native", None)
            assert np.array_equal(native[0], ref[0]) and np.array_equal(native[1], ref[1]), opts


def test_falls_back_without_the_compiled_kernels():
    """A missing extension leaves numba (or numpy) in charge, with the same results."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["zippy._hamming"] = None  # as if the extension had not been built
        import numpy as np
        import zippy.matching as m
        rng = np.random.default_rng(0)
        d0, d1 = rng.integers(0, 3, (70, 32), np.uint8), rng.integers(0, 3, (90, 32), np.uint8)
        assert "native" not in m.available_backends() and m.native_isa() is None
        pairs = [m.match_hamming(d0, d1, ratio=0.9, backend=b)[0] for b in m.available_backends()]
        assert all(np.array_equal(p, pairs[0]) for p in pairs)
        try:
            m.match_hamming(d0, d1, backend="native")
        except ValueError as e:
            assert "not built" in str(e)
        else:
            raise AssertionError("backend='native' without the extension must raise")
        print(m.backend())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("numba" if HAS_NUMBA else "numpy")


def test_set_num_threads():
    assert M.get_num_threads() == 1  # the default
    with pytest.raises(ValueError, match="positive int"):
        M.set_num_threads(0)
    if not HAS_NUMBA:
        return
    import numba

    n = min(2, numba.config.NUMBA_NUM_THREADS)
    d0, d1 = _tied_and_random(np.random.default_rng(4), 300, 200, 32)[0]
    expected = M.match_hamming(d0, d1)
    try:
        M.set_num_threads(n)
        assert M.get_num_threads() == n
        got = M.match_hamming(d0, d1)
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    finally:
        M.set_num_threads(None)
    assert M.get_num_threads() == 1


def test_unaligned_and_padded_widths_agree():
    rng = np.random.default_rng(5)
    d0 = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    d1 = rng.integers(0, 256, (60, 32), dtype=np.uint8)
    raw = np.frombuffer(b"\x00" + d1.tobytes(), np.uint8, offset=1).reshape(60, 32)  # not 8-byte aligned
    for backend in BACKENDS:
        assert np.array_equal(M.match_hamming(d0, raw, backend=backend)[0], M.match_hamming(d0, d1)[0])
    # appending zero bytes to both sides changes no distance
    z0 = np.concatenate([d0, np.zeros((50, 5), np.uint8)], 1)
    z1 = np.concatenate([d1, np.zeros((60, 5), np.uint8)], 1)
    for backend in BACKENDS:
        assert np.array_equal(M.match_hamming(z0, z1, backend=backend)[0], M.match_hamming(d0, d1)[0])


def test_numpy_backend_memory_is_bounded():
    """200k x 32 database: the distance matrix would be 25.6 MB, the unpacked float database 205 MB."""
    rng = np.random.default_rng(7)
    db = rng.integers(0, 256, (200_000, 32), dtype=np.uint8)
    q = db[rng.choice(200_000, 32, replace=False)].copy()
    tracemalloc.start()
    pairs, dist = M.match_hamming(q, db, mutual=False, backend="numpy")
    idx, _ = M.knn_hamming(q, db, 2, backend="numpy")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 25e6, f"peak {peak / 1e6:.1f} MB"
    assert (dist == 0).all() and np.array_equal(db[pairs[:, 1]], q)
    assert np.array_equal(idx[:, 0], pairs[:, 1])
    if HAS_NUMBA:
        assert np.array_equal(M.knn_hamming(q, db, 2, backend="numba")[0], idx)


@needs_numba
@pytest.mark.slow
def test_database_1e6_by_1e3():
    rng = np.random.default_rng(11)
    db = rng.integers(0, 256, (1_000_000, 32), dtype=np.uint8)
    q = rng.integers(0, 256, (1000, 32), dtype=np.uint8)
    q[:10] = db[[5, 999_999, 123_456, 7, 8, 9, 10, 11, 12, 13]]
    idx, dist = M.knn_hamming(q, db, 4)
    assert idx[:10, 0].tolist() == [5, 999_999, 123_456, 7, 8, 9, 10, 11, 12, 13] and (dist[:10, 0] == 0).all()
    sub = M.knn_hamming(q[10:40], db, 4, backend="numpy")
    assert np.array_equal(sub[0], idx[10:40]) and np.array_equal(sub[1], dist[10:40])
    pairs, _ = M.match_hamming(q, db)
    assert len(pairs) >= 10


# --------------------------------------------------------------------------------------- guided
def _masked_reference(d0, d1, allowed, mutual, ratio):
    """Dense brute force restricted to allowed pairs; ties to the lowest index."""
    big = 10**6
    dist = np.where(allowed, _brute(d0, d1), big)
    out = set()
    for i in range(len(d0)):
        if not allowed[i].any():
            continue
        j = int(dist[i].argmin())
        if mutual and int(dist[:, j].argmin()) != i:
            continue
        rest = np.sort(dist[i][allowed[i]])
        if ratio is not None and len(rest) > 1 and not rest[0] < ratio * rest[1]:
            continue
        out.add((i, j))
    return out


def test_guided_hand_computed():
    pred = np.array([[10.0, 10.0], [50.0, 50.0], [np.nan, 0.0]])
    kpts = np.array([[12.0, 10.0], [10.0, 14.0], [50.0, 58.0], [11.0, 10.0]])
    d0 = np.array([[0x0F], [0xFF], [0x00]], np.uint8)
    d1 = np.array([[0x0F], [0x0E], [0xFF], [0x0F]], np.uint8)  # kp 0 and 3 tie with row 0 at distance 0
    pairs, dist = M.match_guided(d0, d1, pred, kpts, 5.0)
    assert pairs.tolist() == [[0, 0]] and dist.tolist() == [0]  # row 1: kp 2 is 8 px away
    pairs, _ = M.match_guided(d0, d1, pred, kpts, np.array([5.0, 8.0, 100.0]))  # radius inclusive
    assert pairs.tolist() == [[0, 0], [1, 2]]
    # a caller filter (e.g. octave check) removes kp 0: kp 3 is next
    pairs, _ = M.match_guided(d0, d1, pred, kpts, 5.0, candidate_filter=lambda i, j: j != 0)
    assert pairs.tolist() == [[0, 3]]
    # 3 candidates at 0, 1, 0 -> tie between best and second fails the ratio test
    assert M.match_guided(d0, d1, pred, kpts, 5.0, ratio=0.99)[0].shape == (0, 2)


@settings(max_examples=60, deadline=None)
@given(
    data=descriptor_pairs(max_n=25), mutual=st.booleans(), ratio=st.sampled_from([None, 0.8]), seed=st.integers(0, 999)
)
def test_guided_equals_masked_brute_force(data, mutual, ratio, seed):
    d0, d1 = data
    rng = np.random.default_rng(seed)
    pred = rng.uniform(0, 100, (len(d0), 2)).round()
    kpts = rng.uniform(0, 100, (len(d1), 2)).round()
    radius = rng.choice([0.0, 10.0, 30.0], len(d0))
    within = np.linalg.norm(pred[:, None] - kpts[None], axis=-1) <= radius[:, None]
    pairs, _ = M.match_guided(d0, d1, pred, kpts, radius, mutual=mutual, ratio=ratio)
    assert _as_set(pairs) == _masked_reference(d0, d1, within, mutual, ratio)


def test_guided_large_radius_equals_dense():
    rng = np.random.default_rng(2)
    d0, d1 = _tied_and_random(rng, 40, 50, 32)[0]
    pred = rng.uniform(0, 640, (40, 2))
    kpts = rng.uniform(0, 480, (50, 2))
    for opts in ({}, {"ratio": 0.9, "mutual": False}):
        g = M.match_guided(d0, d1, pred, kpts, 1e4, **opts)
        d = M.match_hamming(d0, d1, **opts)
        assert np.array_equal(g[0], d[0]) and np.array_equal(g[1], d[1])
    f0, f1 = d0.astype(np.float32), d1.astype(np.float32)
    g = M.match_guided(f0, f1, pred, kpts, 1e4, metric="l2")
    assert np.array_equal(g[0], M.match_l2(f0, f1)[0])


def test_guided_validation():
    d = np.zeros((2, 32), np.uint8)
    p = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"pred0 must be a float array \[2,2\].*\[3,2\]"):
        M.match_guided(d, d, np.zeros((3, 2)), p, 1.0)
    with pytest.raises(ValueError, match="radius"):
        M.match_guided(d, d, p, p, -1.0)
    with pytest.raises(ValueError, match="radius"):
        M.match_guided(d, d, p, p, np.ones(3))
    with pytest.raises(ValueError, match="bool"):
        M.match_guided(d, d, p, p, 1.0, candidate_filter=lambda i, j: i)
    with pytest.raises(ValueError, match="metric"):
        M.match_guided(d, d, p, p, 1.0, metric="cosine")


# ----------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("d0", "d1", "pattern"),
    [
        (np.zeros((3, 32), np.float32), np.zeros((3, 32), np.uint8), r"uint8 \[N,B\].*match_l2.*float32 \[3,32\]"),
        (np.zeros((3, 32), np.int16), np.zeros((3, 32), np.uint8), r"uint8.*int16 \[3,32\]"),
        (np.zeros(32, np.uint8), np.zeros((3, 32), np.uint8), r"2-D.*uint8 \[32\]"),
        (np.zeros((3, 32), np.uint8), np.zeros((3, 16), np.uint8), r"same width.*\[3,32\].*\[3,16\]"),
        (np.zeros((6, 32), np.uint8)[::2], np.zeros((3, 32), np.uint8), r"C-contiguous.*non-contiguous"),
        ([[0] * 32], np.zeros((3, 32), np.uint8), r"numpy array.*got list"),
        (np.zeros((3, 0), np.uint8), np.zeros((3, 0), np.uint8), r"at least one byte"),
    ],
)
def test_bad_binary_input(d0, d1, pattern):
    with pytest.raises(ValueError, match=pattern):
        M.match_hamming(d0, d1)
    with pytest.raises(ValueError, match=pattern):
        M.knn_hamming(d0, d1)


def test_bad_options_and_float_input():
    d = np.zeros((2, 32), np.uint8)
    for kwargs, pattern in (
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"max_distance": -1}, "max_distance"),
        ({"backend": "gpu"}, "backend"),
        ({"threads": 0}, "threads"),
    ):
        with pytest.raises(ValueError, match=pattern):
            M.match_hamming(d, d, **kwargs)
    with pytest.raises(ValueError, match="k must be"):
        M.knn_hamming(d, d, k=0)
    with pytest.raises(ValueError, match=r"float \[N,D\].*match_hamming.*uint8"):
        M.match_l2(d, d)
    with pytest.raises(ValueError, match="finite"):
        M.match_l2(np.full((2, 4), np.nan, np.float32), np.zeros((2, 4), np.float32))
    pairs, dist = M.match_l2(np.eye(3), np.eye(3)[::-1].copy())  # float64 accepted
    assert pairs.tolist() == [[0, 2], [1, 1], [2, 0]] and dist.dtype == np.float32


# ---------------------------------------------------------------------------------- no torch
def test_import_does_not_pull_torch():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import zippy.matching as m
        d = np.zeros((4, 32), np.uint8)
        for backend in m.available_backends():
            m.match_hamming(d, d, backend=backend)
        m.match_l2(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32))
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_benchmark_helpers():
    """The benchmark's descriptors have exactly 64 of 256 bits set; interleaved timing counts calls."""
    from zippy_eval.bench_matcher import _time_interleaved, binary_descriptors

    d = binary_descriptors(np.random.default_rng(0), 50)
    assert d.shape == (50, 32) and d.dtype == np.uint8
    assert (np.unpackbits(d, axis=1).sum(axis=1) == 64).all()
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1
            return {(0, 0)}

        return fn

    times, cpu, results = _time_interleaved({"a": make("a"), "b": make("b")}, repeats=3, budget_s=10.0)
    assert [len(times["a"]), len(times["b"]), len(cpu["a"])] == [3, 3, 3] and calls == {"a": 4, "b": 4}
    assert results["a"] == {(0, 0)}


def test_benchmark_run_small(tmp_path):
    """A tiny run of `zippy bench matcher`: identical pairs across methods, CPU flags, targets and tables."""
    import json

    from zippy_eval.bench_matcher import BenchMatcherConfig, run

    methods = ("zippy_native", "zippy_avx2", "zippy_numpy", "cv2_hamming")  # unavailable ones are skipped
    conf = BenchMatcherConfig(
        sizes=(64, 200), threads=(1,), methods=methods, repeats=2, budget_s=1.0, measure_startup=False
    )
    summary = json.loads(run(conf, tmp_path).read_text())
    assert summary["environment"]["cpu"]["machine"]
    for agree in summary["workers"][0]["agreement"]:
        others = [m for m in agree if m not in ("n", "reference")]
        assert others and all(agree[m]["identical"] for m in others), agree
    assert {r["method"] for r in summary["rows"]} == set(summary["protocol"]["methods"])
    assert (tmp_path / "table.md").read_text().count("|") > 10 and (tmp_path / "bench_matcher.png").exists()


def test_benchmark_scaling_and_cycles():
    from zippy_eval.bench_matcher import _cycles, _scaling

    rows = [
        {"n": n, "method": "zippy_avx2", "threads": 1, "median_ms": ms, "min_ms": ms, "cpu_median_ms": ms / 2}
        for n, ms in ((2000, 2.0), (10000, 52.0))
    ]
    (sc,) = _scaling(rows, (2000, 10000), (1,), ["zippy_avx2"])
    assert sc["ratio"] == 26.0 and sc["ratio_cpu_time"] == 26.0 and sc["n2_ratio"] == 25.0
    workers = [{"rows": rows, "clock_ghz_before": 3.0, "clock_ghz_after": 3.0, "native_isa": "avx512"}]
    c = _cycles(rows, workers)[0]
    assert c["isa"] == "avx2" and c["cycles_per_pair"] == pytest.approx(2e-3 * 3e9 / 4e6)  # 1.5
    assert c["fraction_of_bound"] == pytest.approx(1.0) and c["fraction_of_bound_cpu_time"] == pytest.approx(2.0)
