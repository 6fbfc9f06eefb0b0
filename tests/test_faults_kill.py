"""Fault suite: SIGKILL at random moments, then a rerun: results equal to an uninterrupted run, nothing partial.

For each command one uninterrupted reference run, then for each seed: start the command, wait until it
begins writing (its first output appears), SIGKILL it after a seeded random delay within the reference
run's writing time, rerun it, and compare. Five seeds per command in the default run; ``-m slow`` adds
more seeds. Kill points and timings are printed (``-s``) for the record.
"""

from __future__ import annotations

import json
import random
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from faults_helpers import REPO, TINY_MODEL, Zygote, image_folder, leftovers, textured

SEEDS = [0, 1, 2, 3, 4]
SLOW_SEEDS = list(range(5, 20))
SMALL = REPO / "weights" / "zippypoint_small.pt"


def _timed_run(zygote: Zygote, argv: list[str], started: Callable[[], bool]) -> tuple[float, float]:
    """Run to the end; returns (seconds until ``started()``, total seconds)."""
    t0 = time.perf_counter()
    zygote.start(argv)
    t_start = None
    while zygote.poll():
        if t_start is None and started():
            t_start = time.perf_counter() - t0
        time.sleep(0.005)
    rc = zygote.wait()
    assert rc == 0, zygote.log.read_text()[-3000:]
    total = time.perf_counter() - t0
    return (t_start if t_start is not None else total), total


def _killed_run(zygote: Zygote, argv: list[str], started: Callable[[], bool], delay: float) -> str:
    """Start, wait for ``started()``, SIGKILL after ``delay`` s; returns what happened."""
    zygote.start(argv)
    deadline = time.time() + 300
    while zygote.poll() and not started() and time.time() < deadline:
        time.sleep(0.002)
    time.sleep(delay)
    if zygote.poll():
        zygote.kill()
        rc = zygote.wait()
        assert rc == -signal.SIGKILL, rc
        return f"killed {delay:.2f} s after the first output"
    zygote.wait()
    return f"finished before the kill ({delay:.2f} s)"


def kill_and_rerun(
    argv: list[str],
    reset: Callable[[], None],
    started: Callable[[], bool],
    results: Callable[[], object],
    seeds: list[int],
    rerun_argv: list[str] | None = None,
    clean: Path | None = None,
) -> list[str]:
    """The loop described in the module docstring; ``clean``: the folder that must hold no temp file at the end."""
    t_all = time.perf_counter()
    with Zygote(Path(tempfile.mkdtemp(prefix="zygote_logs_"))) as zygote:
        reset()
        t_first, total = _timed_run(zygote, argv, started)
        reference = results()
        window = max(total - t_first, 0.05)
        log = [f"reference: first output {t_first:.2f} s, total {total:.2f} s"]
        for seed in seeds:
            reset()
            delay = random.Random(seed).uniform(0.0, window)
            what = _killed_run(zygote, argv, started, delay)
            t0 = time.perf_counter()
            rc, err = zygote.run(rerun_argv or argv)
            assert rc == 0, f"seed {seed} ({what}): rerun failed: {err[-3000:]}"
            assert results() == reference, f"seed {seed} ({what}): rerun differs from the uninterrupted run"
            if clean is not None:
                assert leftovers(clean) == [], f"seed {seed} ({what}): {leftovers(clean)}"
            log.append(f"seed {seed}: {what}; rerun {time.perf_counter() - t0:.2f} s: equal, no leftovers")
    log.append(f"{len(seeds)} seeds in {time.perf_counter() - t_all:.1f} s")
    print("\n".join(log))
    return log


def _reset(folder: Path, keep: bool = False) -> Callable[[], None]:
    """Delete ``folder`` (``keep``: leave it there, empty)."""

    def reset() -> None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        if keep:
            folder.mkdir(parents=True)

    return reset


# ------------------------------------------------------------------------------------------ eval hpatches


@pytest.fixture(scope="module")
def hpatches(tmp_path_factory) -> Path:
    import cv2

    from zippy_eval.hpatches.generate import GeneratorConfig, generate_sequences

    src = tmp_path_factory.mktemp("photos")
    photos = []
    for i in range(4):
        photos.append(src / f"p{i}.png")
        cv2.imwrite(str(photos[-1]), textured(120, 160, seed=i))
    out = tmp_path_factory.mktemp("hp")
    generate_sequences(photos, out, GeneratorConfig(n=6, seed=0, num_images=3, max_side=160))
    return out


def _hpatches_results(out: Path) -> Callable[[], object]:
    def results() -> object:
        doc = json.loads((out / "summary.json").read_text())
        table = (out / "table.md").read_text()  # holds extraction times: compared by its method rows' presence
        plots = sorted(p.name for p in out.glob("mma_*.png"))
        return doc["rows"], doc["aggregates"], doc["skipped_sequences"], "| orb |" in table, plots

    return results


def _eval_case(hpatches: Path, out: Path) -> tuple[list[str], Callable[[], bool]]:
    argv = ["eval", "hpatches", str(hpatches), "--methods", "orb", "--settings", "96x128:100", "--out", str(out)]
    argv += ["--threads", "1"]
    return argv, lambda: (out / "cache").is_dir()


def test_kill_eval_hpatches(hpatches: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv, started = _eval_case(hpatches, out)
    kill_and_rerun(argv, _reset(out), started, _hpatches_results(out), SEEDS, clean=out)


def test_kill_eval_hpatches_keeps_finished_work(hpatches: Path, tmp_path: Path) -> None:
    """After a kill, the rerun reuses the features indexed before it (defect 6: it recomputed everything)."""
    out = tmp_path / "out"
    argv, started = _eval_case(hpatches, out)
    zygote = Zygote(tmp_path / "logs")
    _timed_run(zygote, argv, started)
    index = next((out / "cache").rglob("index.json"))
    full = json.loads(index.read_text())
    (out / "summary.json").unlink()
    # a run killed after its third sequence: keep the index entries of the first three sequences only
    seqs = sorted({k.split("/")[0] for k in full})[:3]
    index.write_text(json.dumps({k: v for k, v in full.items() if k.split("/")[0] in seqs}))
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")}
    _timed_run(zygote, argv, started)
    zygote.close()
    kept = [p for p, t in mtimes.items() if p.stat().st_mtime_ns == t]
    assert len(kept) == 3 * len(seqs)
    assert json.loads(index.read_text()).keys() == full.keys()


@pytest.mark.slow
def test_kill_eval_hpatches_many_seeds(hpatches: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv, started = _eval_case(hpatches, out)
    kill_and_rerun(argv, _reset(out), started, _hpatches_results(out), SLOW_SEEDS, clean=out)


# ------------------------------------------------------------------------------------------ detect


def _detect_case(tmp_path: Path) -> tuple[list[str], Path]:
    images = image_folder(tmp_path / "imgs", 10)
    out = tmp_path / "feats"
    argv = ["detect", *sorted(map(str, images.glob("*.png"))), "--out", str(out), *TINY_MODEL]
    return [*argv, "--max-keypoints", "50"], out


def _npz_results(out: Path) -> Callable[[], object]:
    def results() -> object:
        got = {}
        for p in sorted(out.rglob("*.npz")):
            with np.load(p) as z:
                got[p.name] = {k: z[k].tobytes() for k in z.files}
        return got

    return results


@pytest.mark.skipif(not SMALL.is_file(), reason="shipped weights zippypoint_small.pt not found")
@pytest.mark.parametrize("seeds", [SEEDS, pytest.param(SLOW_SEEDS, marks=pytest.mark.slow)], ids=["5", "many"])
def test_kill_detect(tmp_path: Path, seeds: list[int]) -> None:
    argv, out = _detect_case(tmp_path)
    kill_and_rerun(argv, _reset(out), lambda: out.is_dir(), _npz_results(out), seeds, clean=out)


# ------------------------------------------------------------------------------------------ stream


def _stream_results(log: Path, video: Path) -> Callable[[], object]:
    import cv2

    def results() -> object:
        records = [json.loads(x) for x in log.read_text().splitlines()]
        for r in records:
            r.pop("times_ms", None)
            r.pop("fps", None)
        summary = json.loads(log.with_name(f"{log.stem}.summary.json").read_text())
        cap = cv2.VideoCapture(str(video))
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        return records, summary["frames"], summary["end_reason"], frames

    return results


@pytest.mark.parametrize("seeds", [SEEDS, pytest.param(SLOW_SEEDS, marks=pytest.mark.slow)], ids=["5", "many"])
def test_kill_stream(tmp_path: Path, seeds: list[int]) -> None:
    frames = image_folder(tmp_path / "frames", 30, 96, 128)
    out = tmp_path / "run"
    log, video = out / "s.jsonl", out / "s.avi"
    argv = ["stream", "--source", str(frames), "--headless", "--model", "orb", "--size", "96x128", "--threads", "1"]
    argv += ["--log", str(log), "--out", str(video), "--fps", "10"]
    started = lambda: any(out.iterdir())  # noqa: E731  (the first output file)
    kill_and_rerun(argv, _reset(out, keep=True), started, _stream_results(log, video), seeds, clean=out)


# ------------------------------------------------------------------------------------------ train


@pytest.fixture(scope="module")
def train_images(tmp_path_factory) -> Path:
    import cv2

    folder = tmp_path_factory.mktemp("train_imgs")
    for i in range(4):
        cv2.imwrite(str(folder / f"bsds500_train_{i}.png"), textured(72, 96, seed=10 + i))
    return folder


def _train_results(out: Path, steps: int) -> Callable[[], object]:
    """What a resumed run must end with: the step count, a loadable network, a clean log covering every step.

    Not the weights' values: a resumed run restarts its epoch's data order from the checkpoint, so its
    batches (and weights) differ from an uninterrupted run's; equality holds for what is compared here.
    """
    from zippy.weights import load_model

    def results() -> object:
        model, meta = load_model(out / "weights.pt")
        records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
        logged = sorted({r["step"] for r in records if "loss" in r})
        stops = [r["step"] for r in records if r.get("event") == "stop"]
        return meta["steps"], model.cfg.backbone, logged, stops[-1]

    return results


@pytest.mark.parametrize("seeds", [SEEDS, pytest.param(SLOW_SEEDS, marks=pytest.mark.slow)], ids=["5", "many"])
def test_kill_train(train_images: Path, tmp_path: Path, seeds: list[int]) -> None:
    out = tmp_path / "run"
    steps = 6
    argv = ["train", "--images", str(train_images), "--out", str(out), "--steps", str(steps), "--batch-size", "1"]
    argv += ["--workers", "0", "--threads", "1", "--val-every", "0", "--crop", "64x64", "--no-progress"]
    argv += ["--ckpt-minutes", "0", "--warmup-steps", "1"]
    log = kill_and_rerun(
        argv,
        _reset(out),
        lambda: (out / "log.jsonl").is_file(),
        _train_results(out, steps),
        seeds,
        rerun_argv=[*argv, "--resume"],
        clean=out,
    )
    assert sum("killed" in line for line in log) >= len(seeds) // 2, log
