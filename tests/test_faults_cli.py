"""Fault suite: the `zippy` command's error boundary and the defects a fault probe found in the commands.

Each test names the defect (issue #29) it keeps out; the commands run in-process through
``zippy_apps.cli.main`` (the error boundary) on tiny images.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults_helpers import TINY_MODEL, image_folder, leftovers, write_image

from zippy.features import load_features
from zippy_apps.cli import main

SMALL = Path(__file__).resolve().parents[1] / "weights" / "zippypoint_small.pt"
needs_small = pytest.mark.skipif(not SMALL.is_file(), reason="shipped weights zippypoint_small.pt not found")


def _one_line_error(capsys, code: int, rc: int, match: str = "") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    assert len(err) >= 1 and "Traceback" not in "\n".join(err)
    last = err[-1]
    assert last.startswith("zippy "), last
    assert match in last, last
    return last


# ------------------------------------------------------------------------------------------ the boundary


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "x.png"),
        PermissionError(errno.EACCES, "Permission denied", "out/f.npz"),
        FileExistsError(errno.EEXIST, "File exists", "out"),
        IsADirectoryError(errno.EISDIR, "Is a directory", "out"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=lambda e: type(e).__name__ + ("_enospc" if getattr(e, "errno", None) == errno.ENOSPC else ""),
)
def test_expected_errors_end_with_one_line_and_exit_2(exc: BaseException, monkeypatch, capsys) -> None:
    """Defect 4: PermissionError / OSError / FileExistsError were tracebacks with exit 1."""
    import zippy_apps.cmd_detect as cmd

    def fail(args):
        raise exc

    monkeypatch.setattr(cmd, "run", fail)
    rc = main(["detect", "x.png", "--out", "o"])
    line = _one_line_error(capsys, 2, rc, "zippy detect: error:")
    assert (getattr(exc, "strerror", None) or str(exc)) in line


def test_unexpected_errors_say_so_in_one_line_and_debug_shows_the_traceback(monkeypatch, capsys) -> None:
    import zippy_apps.cmd_detect as cmd

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cmd, "run", bug)
    rc = main(["detect", "x.png", "--out", "o"])
    _one_line_error(capsys, 1, rc, "internal error: RuntimeError: a bug (run with --debug")
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", "detect", "x.png", "--out", "o"])


def test_refused_rename_in_detect_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    """Defect 4: a PermissionError while writing results (a read-only output folder, simulated)."""
    img = write_image(tmp_path / "a.png")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    rc = main(["detect", str(img), "--out", str(tmp_path / "out"), *TINY_MODEL, "--max-keypoints", "20"])
    _one_line_error(capsys, 2, rc, "Permission denied")
    assert leftovers(tmp_path) == []


def test_output_folder_that_is_a_file(tmp_path: Path, capsys) -> None:
    """Defect 4: `--out FILE` raised FileExistsError (traceback)."""
    img = write_image(tmp_path / "a.png")
    (tmp_path / "out").write_text("keep")
    rc = main(["detect", str(img), "--out", str(tmp_path / "out"), *TINY_MODEL])
    _one_line_error(capsys, 2, rc, "out")
    assert (tmp_path / "out").read_text() == "keep"


@needs_small
def test_weights_with_the_wrong_keys(tmp_path: Path, capsys) -> None:
    """Defect 4: a weights file with the wrong keys was a RuntimeError traceback."""
    import torch

    blob = torch.load(SMALL, map_location="cpu", weights_only=True)
    blob["state_dict"] = {"bogus.weight": torch.zeros(3)}
    torch.save(blob, tmp_path / "bad.pt")
    img = write_image(tmp_path / "a.png")
    rc = main(["detect", str(img), "--out", str(tmp_path / "o"), "--weights", str(tmp_path / "bad.pt")])
    _one_line_error(capsys, 2, rc, "do not fit")


@needs_small
def test_max_keypoints_beyond_int64(tmp_path: Path, capsys) -> None:
    """Defect 4: max_keypoints = 2**64 reached numba (typing error, traceback)."""
    img = write_image(tmp_path / "a.png")
    rc = main(["detect", str(img), "--out", str(tmp_path / "o"), *TINY_MODEL, "--max-keypoints", str(2**64)])
    _one_line_error(capsys, 2, rc, "max_keypoints")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ detect, export, match


@needs_small
def test_detect_same_stem_in_several_folders_writes_every_result(tmp_path: Path, capsys) -> None:
    """Defect 1: a/s0.png b/s0.png c/s0.jpg wrote one s0.npz (two results overwritten), exit 0."""
    imgs = [
        write_image(tmp_path / "a" / "s0.png", seed=1),
        write_image(tmp_path / "b" / "s0.png", seed=2),
        write_image(tmp_path / "c" / "s0.jpg", seed=3),
    ]
    out = tmp_path / "out"
    rc = main(["detect", *map(str, imgs), "--out", str(out), *TINY_MODEL, "--max-keypoints", "30"])
    assert rc == 0, capsys.readouterr().err
    files = sorted(out.rglob("*.npz"))
    assert [p.relative_to(out).as_posix() for p in files] == ["a/s0.npz", "b/s0.npz", "c/s0.npz"]
    kps = [load_features(p).keypoints for p in files]
    assert not np.array_equal(kps[0], kps[1]) and not np.array_equal(kps[1], kps[2])


def test_detect_refuses_two_images_writing_one_file(tmp_path: Path, capsys) -> None:
    imgs = [write_image(tmp_path / "c" / "s0.png"), write_image(tmp_path / "c" / "s0.jpg")]
    rc = main(["detect", *map(str, imgs), "--out", str(tmp_path / "out"), *TINY_MODEL])
    _one_line_error(capsys, 2, rc, "would both write s0.npz")
    assert not (tmp_path / "out").exists()


@needs_small
def test_export_refuses_to_overwrite_its_source(tmp_path: Path, capsys) -> None:
    """Defect 2: `zippy export --weights X --out X --format onnx` replaced the weights with an ONNX graph."""
    src = tmp_path / "w.pt"
    shutil.copyfile(SMALL, src)
    before = src.read_bytes()
    rc = main(["export", "--format", "onnx", "--weights", str(src), "--out", str(src), "--max-keypoints", "50"])
    _one_line_error(capsys, 2, rc, "is the --weights file")
    assert src.read_bytes() == before
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    rc = main(["export", "--format", "compact", "--weights", str(src), "--out", str(link)])
    _one_line_error(capsys, 2, rc, "is the --weights file")
    assert src.read_bytes() == before


@needs_small
@pytest.mark.parametrize(
    "bad",
    [["--max-keypoints", "0"], ["--int8", "--format", "compact"], ["--check-images", "absent.png"]],
    ids=["max_keypoints_0", "int8_compact", "missing_check_image"],
)
def test_export_validates_its_arguments_before_writing(bad: list[str], tmp_path: Path, capsys) -> None:
    """Defect 7: export wrote its output before validating its arguments."""
    out = tmp_path / "out.pt"
    argv = ["export", "--weights", str(SMALL), "--out", str(out), *bad]
    if "--format" not in bad:
        argv += ["--format", "compact"]
    rc = main(argv)
    _one_line_error(capsys, 2, rc)
    assert not out.exists() and leftovers(tmp_path) == []


@needs_small
def test_match_into_a_folder_leaves_no_stray_file(tmp_path: Path, capsys) -> None:
    """Defect 7: `zippy match --out DIR` left DIR.tmp (a fixed name)."""
    a, b = write_image(tmp_path / "a.png", seed=1), write_image(tmp_path / "b.png", seed=2)
    (tmp_path / "pic").mkdir()
    rc = main(["match", str(a), str(b), "--out", str(tmp_path / "pic"), *TINY_MODEL, "--max-keypoints", "30"])
    _one_line_error(capsys, 2, rc, "pic")
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "pic"]


# ------------------------------------------------------------------------------------------ stream


def _stream(source: Path, *extra: str) -> int:
    return main(["stream", "--source", str(source), "--headless", "--model", "orb", "--size", "64x64", *extra])


def test_stream_log_into_a_folder_leaves_no_partial_file(tmp_path: Path, capsys) -> None:
    """Defect 7: `zippy stream --log DIR` left DIR.partial."""
    src = image_folder(tmp_path / "frames", 3)
    (tmp_path / "logdir").mkdir()
    rc = _stream(src, "--log", str(tmp_path / "logdir"))
    _one_line_error(capsys, 2, rc, "logdir")
    assert leftovers(tmp_path) == [] and list((tmp_path / "logdir").iterdir()) == []


def test_stream_with_every_frame_corrupt_fails(tmp_path: Path, capsys) -> None:
    """Defect 9: exit 0 after 0 processed frames when every frame is corrupt."""
    src = tmp_path / "frames"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(b"not a png" * (i + 1))
    rc = _stream(src, "--log", str(tmp_path / "s.jsonl"))
    _one_line_error(capsys, 2, rc, "no frame processed")
    assert leftovers(tmp_path) == []


def test_stream_refuses_a_negative_fps(tmp_path: Path, capsys) -> None:
    """Defect 9: a negative --fps was accepted (negative timestamps in the log)."""
    src = image_folder(tmp_path / "frames", 2)
    rc = _stream(src, "--fps", "-5", "--log", str(tmp_path / "s.jsonl"))
    _one_line_error(capsys, 2, rc, "--fps")
    assert not (tmp_path / "s.jsonl").exists()


def test_stream_creates_a_missing_output_folder(tmp_path: Path, capsys) -> None:
    """Defect 9: stream refused a missing output folder while the other commands create it."""
    src = image_folder(tmp_path / "frames", 3)
    log = tmp_path / "new" / "deeper" / "s.jsonl"
    rc = _stream(src, "--log", str(log))
    assert rc == 0, capsys.readouterr().err
    assert len(log.read_text().splitlines()) == 3 and (log.parent / "s.summary.json").is_file()
    assert oct(log.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------ logging


def test_cli_logging_keeps_other_libraries_quiet(tmp_path: Path, monkeypatch, capsys) -> None:
    """Defect 9: `zippy eval` flooded the terminal with matplotlib INFO lines (root logger at INFO)."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a fresh process, where basicConfig takes effect
    level = root.level
    try:
        main(["detect", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")])
        assert logging.getLogger("matplotlib.font_manager").getEffectiveLevel() >= logging.WARNING
        assert logging.getLogger("PIL").getEffectiveLevel() >= logging.WARNING
        assert logging.getLogger("zippy_eval.hpatches.pipeline").getEffectiveLevel() <= logging.INFO
    finally:
        root.handlers.clear()
        root.setLevel(level)
    capsys.readouterr()
