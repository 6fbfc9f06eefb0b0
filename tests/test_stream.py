"""Tests of the stream app: tracking API, sources, drawing, the `zippy stream` command and its outputs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from zippy.features import Features
from zippy.geometry import corner_error, estimate_relative_pose, scale_intrinsics
from zippy.tracking import FrameResult, Tracker
from zippy_apps import cmd_stream, stream
from zippy_apps.bench_stream import synthetic_homographies, write_synthetic_video
from zippy_apps.draw import TRACKED, Drawer, display_available
from zippy_apps.stream import SourceError, track

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TUM = SHARED / "localization" / "tum_freiburg_sequence"
SIZE = (240, 320)
N_FRAMES = 40


def _extractor(name: str):
    from zippy_eval.methods import get_method

    if name == "orb":
        return get_method("orb")
    from zippy.weights import shipped_weights

    if shipped_weights(name) is None:
        pytest.skip(f"{name}: no trained weights ship yet (the homography test needs a trained model)")
    extractor = get_method(name)
    assert extractor.info()["params"]["trained"]
    return extractor


@pytest.fixture(scope="module")
def orb():
    return _extractor("orb")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 240x320 mp4 of a photo panned, rotated and zoomed by known homographies, and those homographies."""
    path = tmp_path_factory.mktemp("video") / "synthetic.mp4"
    return path, write_synthetic_video(path, n_frames=N_FRAMES, size=SIZE)


def _frames(n: int, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    """The first n in-memory RGB frames of a 30-frame synthetic sequence (small motion between frames)."""
    from skimage import data

    photo = data.astronaut()
    return [
        cv2.warpPerspective(photo, H, (size[1], size[0]), borderMode=cv2.BORDER_REFLECT)
        for H in synthetic_homographies(30, size, photo.shape[:2])[:n]
    ]


def _cli(argv: list[str]) -> int:
    """`zippy stream ARGS` without the other commands of apps/cli.py (built lazily by their owners)."""
    parser = argparse.ArgumentParser()
    cmd_stream.add_arguments(parser)
    return cmd_stream.run(parser.parse_args(argv))


def _video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


# ------------------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("method", ["orb", "zippypoint", "zippypoint_small"])
def test_synthetic_video_homographies_and_outputs(method: str, synthetic, tmp_path: Path) -> None:
    video, gt = synthetic
    extractor = _extractor(method)
    errors: list[float] = []

    def check(r: FrameResult) -> None:
        if r.to_prev is not None:
            errors.append(corner_error(r.to_prev.matrix, gt[r.index - 1], SIZE[1], SIZE[0]))

    out, log = tmp_path / "result.mp4", tmp_path / "stats.jsonl"
    s = track(video, extractor, size=SIZE, max_keypoints=500)
    summary = cmd_stream.run_stream(s, out=out, log=log, on_result=check, progress=False)

    assert summary["frames"] == N_FRAMES and summary["end_reason"] == "end of stream"
    assert len(errors) == N_FRAMES - 1
    assert np.mean(np.array(errors) <= 3.0) >= 0.9, np.round(errors, 2)
    assert _video_frames(out) == N_FRAMES
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(N_FRAMES))
    assert records[0]["prev"] is None and records[1]["prev"]["model"] == "homography"
    assert {"read", "extract", "match", "geometry", "draw", "total"} <= set(records[1]["times_ms"])
    saved = json.loads((tmp_path / "stats.summary.json").read_text())
    assert saved["fps"]["p50"] > 0 and saved["stats_frames"] == N_FRAMES - 1
    assert not list(tmp_path.glob("*.partial*"))


def test_cli_headless(synthetic, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    video, _ = synthetic
    out, log = tmp_path / "cli.avi", tmp_path / "cli.jsonl"
    argv = ["--source", str(video), "--headless", "--out", str(out), "--log", str(log)]
    code = _cli([*argv, "--max-frames", "7", "--model", "orb", "--size", "120x160", "--keyframe-ratio", "0.7"])
    assert code == 0
    assert _video_frames(out) == 7
    assert len(log.read_text().splitlines()) == 7
    summary = json.loads((tmp_path / "cli.summary.json").read_text())
    assert summary["end_reason"] == "max frames" and summary["size"] == [120, 160]
    assert "FPS mean" in capsys.readouterr().out


@pytest.mark.shared
def test_image_folder_tum_with_intrinsics() -> None:
    if not TUM.is_dir():
        pytest.skip(f"TUM sequence not found: {TUM}")
    files = sorted(TUM.glob("*.png"))
    # TUM RGB-D freiburg3 intrinsics at 640x480; the app rescales them to the 240x320 working size
    with track(TUM, _extractor("orb"), size=SIZE, intrinsics="535.4,539.2,320.1,247.6") as s:
        results = list(s)
    assert len(results) == len(files) and s.skipped == []
    assert [r.timestamp for r in results] == [float(f.stem) for f in files]
    assert results[0].scale == (0.5, 0.5) and results[0].image.shape == (240, 320, 3)
    pairs = [r.to_prev for r in results[1:]]
    assert all(p is not None and p.model == "essential" for p in pairs)
    good = [p for p in pairs if p.R is not None and p.num_inliers >= 20]
    assert len(good) >= 0.9 * len(pairs)
    for p in good:
        assert np.allclose(p.R @ p.R.T, np.eye(3), atol=1e-6) and np.isclose(np.linalg.norm(p.t), 1.0)


# ------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("robust", ["fast", "magsac", "ransac"])
def test_relative_pose_recovers_known_motion(robust: str) -> None:
    rng = np.random.default_rng(0)
    K = np.array([[300.0, 0, 160], [0, 300.0, 120], [0, 0, 1]])
    X = np.c_[rng.uniform(-2, 2, (200, 2)), rng.uniform(4, 8, 200)]  # points in front of camera 0
    a = np.deg2rad(5.0)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    t = np.array([0.5, 0.0, 0.1])

    def project(P: np.ndarray) -> np.ndarray:
        p = P @ K.T
        return p[:, :2] / p[:, 2:]

    E, R_est, t_est, inliers = estimate_relative_pose(project(X), project(X @ R.T + t), K, 1.0, method=robust)
    assert E is not None and inliers.mean() > 0.95
    assert np.allclose(R_est, R, atol=1e-3)
    assert np.allclose(t_est, t / np.linalg.norm(t), atol=1e-3)


def test_scale_intrinsics_pixel_centres() -> None:
    # x -> (x + 0.5) * s - 0.5: the centre of a 640-wide image (319.5) maps to the centre of 320 (159.5)
    assert scale_intrinsics((500.0, 400.0, 319.5, 239.5), (0.5, 0.5)) == (250.0, 200.0, 159.5, 119.5)


# ------------------------------------------------------------------------------------------- keyframes


class CodeExtractor:
    """Frame i shows the scene points ("codes") i*shift .. i*shift + n - 1 at fixed positions: a static
    camera whose view slides along a list of points, so inliers to a keyframe d frames back are n - d*shift."""

    binary = True

    def __init__(self, n: int = 100, shift: int = 10, total: int = 400):
        rng = np.random.default_rng(1)
        self.codes = rng.integers(0, 256, (total, 32), dtype=np.uint8)
        self.positions = (rng.uniform(10, 230, (total, 2)) * [1.3, 1.0]).astype(np.float32)
        self.n, self.shift, self.calls = n, shift, 0

    def extract(self, image: np.ndarray, max_keypoints: int = 1000) -> Features:
        idx = np.arange(self.calls * self.shift, self.calls * self.shift + self.n)
        self.calls += 1
        return Features(self.positions[idx], np.ones(len(idx), np.float32), self.codes[idx], (320, 240))


@pytest.mark.parametrize("robust", ["fast", "magsac", "ransac"])
def test_keyframes_and_track_ids(robust: str) -> None:
    extractor = CodeExtractor()
    tracker = Tracker(extractor, keyframe_ratio=0.5, robust=robust)
    image = np.zeros((240, 320, 3), np.uint8)
    results = [tracker.process(image, index=i) for i in range(14)]
    # reference = 90 inliers (frame after the keyframe); new keyframe when inliers < 45: 100 - 10 d < 45 -> d = 6
    assert [r.index for r in results if r.new_keyframe] == [0, 6, 12]
    assert [r.keyframe_index for r in results] == [0] * 7 + [6] * 6 + [12]
    assert results[3].to_key is not None and results[3].to_key.num_inliers == 70
    assert results[6].to_key.num_inliers == 40 and results[7].to_key is results[7].to_prev
    assert all(r.to_prev.num_inliers == 90 for r in results[1:])
    assert np.allclose(results[5].to_prev.matrix, np.eye(3), atol=1e-6)
    # scene point 50 is keypoint 50 in frame 0, 40 in frame 1, ..., 0 in frame 5: one track id
    ids = [results[i].track_ids[50 - 10 * i] for i in range(6)]
    assert len(set(ids)) == 1
    assert len(set(results[6].track_ids) & set(results[0].track_ids)) == 40


# ------------------------------------------------------------------------------------------- robustness


def test_missing_and_bad_sources(orb, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        track(tmp_path / "missing.mp4", orb)
    with pytest.raises(SourceError, match="cannot open camera 9"):
        track(9, orb)
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(SourceError, match="cannot open video"):
        track(tmp_path / "corrupt.mp4", orb)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        track(tmp_path / "empty", orb)
    with pytest.raises(ValueError, match="size must be"):
        track(_frames(2), orb, size=(8, 8))
    with pytest.raises(ValueError, match="keyframe_ratio"):
        track(_frames(2), orb, keyframe_ratio=1.5)
    with pytest.raises(ValueError, match="robust must be one of"):
        track(_frames(2), orb, robust="lmeds")


def test_bad_frames_are_skipped_and_size_change_restarts(orb) -> None:
    frames: list = _frames(6)
    big = cv2.resize(frames[4], (640, 480))
    nan = np.full((240, 320, 3), np.nan, np.float32)
    source = [
        frames[0],
        frames[1],
        None,
        np.zeros((0, 0, 3), np.uint8),
        frames[2][:8, :8],
        nan,
        frames[3],
        big,
        frames[5],
    ]
    with track(source, orb, size=SIZE) as s:
        results = list(s)
    assert [r.source_index for r in results] == [0, 1, 6, 7, 8]
    assert [k.source_index for k in s.skipped] == [2, 3, 4, 5]
    assert "None" in s.skipped[0].reason and "at least 16" in s.skipped[1].reason and "NaN" in s.skipped[3].reason
    assert all(r.image.shape == (240, 320, 3) for r in results)
    assert results[2].to_prev is not None and results[2].to_prev.matrix is not None  # a skip does not break tracking
    assert results[3].to_prev is None and results[3].new_keyframe and results[3].scale == (0.5, 0.5)  # 640x480
    assert results[4].to_prev is None  # back to 240x320: restart again
    assert s.end_reason == "end of stream"


def test_damaged_video_files(orb, synthetic, tmp_path: Path) -> None:
    video, _ = synthetic
    data = bytearray(video.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 3000] = np.random.default_rng(0).bytes(3000)  # garbage inside the frame data
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    s = track(tmp_path / "corrupt.mp4", orb, size=(120, 160))
    n = len(list(s))
    # the decoder conceals or drops damaged frames (FFmpeg decides); the stream must go on to the end
    assert s.end_reason == "end of stream" and N_FRAMES // 2 <= n <= N_FRAMES
    assert n + len(s.skipped) <= N_FRAMES and all("decoded" in k.reason for k in s.skipped)

    write_synthetic_video(tmp_path / "full.avi", n_frames=20, size=(120, 160))
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])  # truncated: the index says 20 frames
    s = track(tmp_path / "cut.avi", orb, size=(120, 160))
    n = len(list(s))
    assert s.end_reason == "end of stream" and 5 <= n < 20


def test_url_source(orb, tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    write_synthetic_video(tmp_path / "clip.avi", n_frames=8, size=(120, 160))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            """No request logging."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with track(f"{url}/clip.avi", orb, size=(120, 160)) as s:
            results = list(s)
        assert len(results) == 8 and s.skipped == [] and s.end_reason == "end of stream"
        with pytest.raises(SourceError, match="cannot open stream"):
            track(f"{url}/missing.avi", orb)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_native_size_keeps_first_frame_size(orb) -> None:
    frames = _frames(3, size=(64, 80))
    frames.append(cv2.resize(frames[2], (40, 32)))
    results = list(track(frames, orb, size=None))
    assert [r.image.shape for r in results] == [(64, 80, 3)] * 4


def test_image_folder_skips_corrupt_file(orb, tmp_path: Path) -> None:
    for i, frame in enumerate(_frames(3)):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / "001b.png").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("ignored")
    s = track(tmp_path, orb, fps=10)
    results = list(s)
    assert [r.source_index for r in results] == [0, 1, 3]  # sorted: 000, 001, 001b, 002
    assert [r.timestamp for r in results] == [0.0, 1.0, 2.0]  # numeric names are timestamps
    assert [k.source_index for k in s.skipped] == [2] and "001b.png" in s.skipped[0].reason


def test_max_frames_and_end_of_stream(orb) -> None:
    s = track(_frames(4), orb, max_frames=2)
    assert len(list(s)) == 2 and s.end_reason == "max frames"
    s = track(_frames(4), orb, max_frames=10)
    assert len(list(s)) == 4 and s.end_reason == "end of stream"


def test_outputs_finalized_on_keyboard_interrupt(orb, tmp_path: Path) -> None:
    def frames():
        yield from _frames(5)
        raise KeyboardInterrupt

    out, log = tmp_path / "v.mp4", tmp_path / "s.jsonl"
    summary = cmd_stream.run_stream(track(frames(), orb), out=out, log=log, progress=False)
    assert summary["interrupted"] and summary["frames"] == 5
    assert _video_frames(out) == 5 and len(log.read_text().splitlines()) == 5
    assert json.loads((tmp_path / "s.summary.json").read_text())["end_reason"] == "interrupted"
    assert not list(tmp_path.glob("*.partial*"))


def test_outputs_finalized_on_error(orb, tmp_path: Path) -> None:
    class Failing:
        calls = 0

        def extract(self, image: np.ndarray, max_keypoints: int = 1000) -> Features:
            self.calls += 1
            if self.calls == 4:
                raise RuntimeError("extractor failed")
            return orb.extract(image, max_keypoints)

    out, log = tmp_path / "v.mp4", tmp_path / "s.jsonl"
    with pytest.raises(RuntimeError, match="extractor failed"):
        cmd_stream.run_stream(track(_frames(6), Failing()), out=out, log=log, progress=False)
    assert _video_frames(out) == 3 and len(log.read_text().splitlines()) == 3
    assert json.loads((tmp_path / "s.summary.json").read_text())["end_reason"] == "error"


def test_cli_errors(tmp_path: Path) -> None:
    # apps/cli.py turns these exceptions into a one-line message and exit code 2
    base = ["--headless", "--model", "orb", "--source"]
    with pytest.raises(FileNotFoundError, match="not found"):
        _cli([*base, str(tmp_path / "none.mp4")])
    with pytest.raises(ValueError, match="size must be"):
        _cli([*base, str(tmp_path), "--size", "big"])
    with pytest.raises(ValueError, match="--out must end"):
        _cli([*base, str(tmp_path), "--out", str(tmp_path / "x.gif")])
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        _cli([*base, str(tmp_path), "--log", str(tmp_path / "file" / "s.jsonl")])
    with pytest.raises(ValueError, match="intrinsics"):
        _cli([*base, str(tmp_path), "--intrinsics", "1,2,3"])
    with pytest.raises(ValueError, match="unknown method"):
        _cli([*base, str(tmp_path), "--model", "nosuchmodel"])
    with pytest.raises(SourceError, match="no image files"):
        _cli([*base, str(tmp_path)])


# ------------------------------------------------------------------------------------------- parsing, summary, drawing


def test_parsers() -> None:
    assert stream.parse_size("240x320") == (240, 320)
    assert stream.parse_intrinsics("1, 2,3,4") == (1.0, 2.0, 3.0, 4.0)
    for bad in ("240", "ax3", "8x320"):
        with pytest.raises(ValueError, match="size"):
            stream.parse_size(bad)
    for bad in ("1,2,3", "0,1,2,3", "1,nan,2,3"):
        with pytest.raises(ValueError, match="intrinsics"):
            stream.parse_intrinsics(bad)


def test_summarize_hand_computed() -> None:
    times = [{"total": 100.0, "extract": 90.0}, {"total": 10.0, "extract": 5.0}, {"total": 20.0}, {"total": 40.0}]
    s = cmd_stream.summarize(times, warmup=1)
    assert s["stats_frames"] == 3 and s["warmup_frames"] == 1
    # frame times 10, 20, 40 ms: mean 23.33 -> 42.86 FPS; median 20 -> 50 FPS; p90 = 20 + 0.8 * 20 = 36 -> 27.78
    assert s["fps"] == {"mean": 42.86, "p50": 50.0, "p90": 27.78}
    assert s["times_ms"]["extract"] == {"mean": 5.0, "p50": 5.0, "p90": 5.0}


def test_drawer(orb) -> None:
    frames = _frames(2)
    tracker = Tracker(orb)
    r0, r1 = (tracker.process(f, index=i) for i, f in enumerate(frames))
    drawer = Drawer(track_length=3)
    before = r1.image.copy()
    drawer.draw(r0)
    canvas = drawer.draw(r1, fps=25.0)
    assert canvas.shape == (240, 320, 3) and canvas.dtype == np.uint8
    assert np.array_equal(r1.image, before)
    tracked = r1.features.keypoints[r1.to_prev.matches[r1.to_prev.inliers, 1]]
    x, y = np.round(tracked[tracked[:, 1] > 80][0]).astype(int)  # below the text overlay
    assert tuple(canvas[y, x]) == TRACKED
    assert not np.array_equal(canvas[:60], cv2.cvtColor(r1.image, cv2.COLOR_RGB2BGR)[:60])  # text overlay


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY decides only on Linux")
def test_no_display_without_display_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert display_available() is False


def test_bench_stream_smoke(tmp_path: Path) -> None:
    from zippy_apps.bench_stream import BenchConfig, run

    conf = BenchConfig(methods=["orb", "nosuchmethod"], sources=["synthetic"], frames=12, warmup=1)
    summary = json.loads(run(conf, tmp_path).read_text())
    (row,) = summary["rows"]
    assert row["method"] == "orb" and row["frames"] == 12 and row["fps"]["mean"] > 0
    assert 0.0 <= row["frac_corner_error_le_3px"] <= 1.0 and "nosuchmethod" in summary["skipped"]
    assert summary["protocol"]["threads"] == 1 and summary["environment"]["loadavg"] is not None
    assert (tmp_path / "summary.md").read_text().count("| orb |") == 1 and (tmp_path / "stage_times.png").is_file()
