"""Fault suite: atomic writes (one helper, zippy.io) under a full disk, a refused rename and the umask."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from faults_helpers import leftovers

from zippy.features import Features, load_features, save_features


def _features(n: int = 5, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    return Features(
        rng.uniform(0, 60, (n, 2)).astype(np.float32),
        rng.random(n).astype(np.float32),
        rng.integers(0, 256, (n, 32), dtype=np.uint8),
        (64, 48),
    )


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _tiny_model():
    from zippy.models import KeypointNet, ModelConfig

    return KeypointNet(ModelConfig(backbone="zippypoint", widths=(8, 16, 16), feat_dim=32)).eval()


def _write_npz(p: Path) -> Path:
    return save_features(_features(), p / "f.npz")


def _write_h5(p: Path) -> Path:
    pytest.importorskip("h5py")
    return save_features(_features(), p / "f.h5")


def _write_summary(p: Path) -> Path:
    from zippy_eval.results import write_summary

    return write_summary(p, protocol={}, dataset={}, methods={}, rows=[], aggregates={})


def _write_table(p: Path) -> Path:
    from zippy_eval.results import write_text

    return write_text(p / "table.md", "| a |\n")


def _write_plot(p: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zippy_eval.results import save_figure

    return save_figure(plt.figure(figsize=(1, 1)), p / "plot.png")


def _write_weights(p: Path) -> Path:
    from zippy.weights import save_weights

    return save_weights(p / "w.pt", _tiny_model(), {"trained": False})


def _write_onnx(p: Path) -> Path:
    pytest.importorskip("onnx")
    from zippy.quant import onnx_engine

    return onnx_engine.export_fp32(_tiny_model(), p / "m.onnx")


def _write_png(p: Path) -> Path:
    from zippy_apps.pairviz import write_png

    return write_png(p / "m.png", np.zeros((20, 30, 3), np.uint8))


WRITERS = {
    "features_npz": _write_npz,
    "features_h5": _write_h5,
    "summary_json": _write_summary,
    "table_md": _write_table,
    "plot_png": _write_plot,
    "weights_pt": _write_weights,
    "onnx": _write_onnx,
    "match_png": _write_png,
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_written_files_get_the_umask_mode_and_leave_no_temp_file(kind: str, tmp_path: Path, umask_022) -> None:
    """Defect 5: mkstemp + rename kept mode 0600; a plain open() gives 0644 under umask 022."""
    path = WRITERS[kind](tmp_path)
    assert path.is_file()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644), f"{kind}: {oct(path.stat().st_mode & 0o777)}"
    assert leftovers(tmp_path) == []


def test_mode_follows_a_stricter_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = save_features(_features(), tmp_path / "f.npz")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_full_disk_keeps_the_old_file_and_removes_the_temp_file(tmp_path: Path, monkeypatch) -> None:
    target = save_features(_features(seed=1), tmp_path / "f.npz")
    before = target.read_bytes()

    def full(f, **arrays):
        f.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(OSError) as e:
        save_features(_features(seed=2), target)
    assert e.value.errno == errno.ENOSPC
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_full_disk_at_fsync(tmp_path: Path, monkeypatch) -> None:
    """A disk that fills up while the data is flushed (the error comes at fsync): old target kept."""
    from zippy import io

    target = io.write_text(tmp_path / "t.md", "old\n")

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space"):
        io.write_text(target, "new\n" * 1000)
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_refused_rename_keeps_the_old_file_and_removes_the_temp_file(tmp_path: Path, monkeypatch) -> None:
    """A read-only folder, simulated (tests run as root, where chmod does not stop writes): rename refused."""
    target = save_features(_features(seed=1), tmp_path / "f.npz")
    before = target.read_bytes()

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        save_features(_features(seed=2), target)
    assert target.read_bytes() == before and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the rename test above simulates it")
def test_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            save_features(_features(), folder / "f.npz")
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        save_features(_features(), tmp_path / "file" / "f.npz")
    assert (tmp_path / "file").read_text() == "x"


def test_target_is_a_folder(tmp_path: Path) -> None:
    from zippy import io

    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        io.write_text(tmp_path / "d", "x")
    assert leftovers(tmp_path) == [] and list((tmp_path / "d").iterdir()) == []


def test_interrupted_write_removes_the_temp_file(tmp_path: Path) -> None:
    from zippy import io

    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not (tmp_path / "x.bin").exists() and leftovers(tmp_path) == []


def test_streamed_file_commits_or_discards(tmp_path: Path) -> None:
    from zippy import io

    f = io.AtomicFile(tmp_path / "log.jsonl", "w", buffering=1)
    f.write("a\n")
    assert not (tmp_path / "log.jsonl").exists() and len(io.temp_files(tmp_path)) == 1
    f.commit()
    assert (tmp_path / "log.jsonl").read_text() == "a\n"
    g = io.AtomicFile(tmp_path / "log.jsonl", "w")
    g.write("b\n")
    g.discard()
    g.discard()
    assert (tmp_path / "log.jsonl").read_text() == "a\n" and io.temp_files(tmp_path) == []


def test_temp_names_are_unique_and_recognised(tmp_path: Path) -> None:
    from zippy import io

    with io.atomic_path(tmp_path / "a.npz") as t1, io.atomic_path(tmp_path / "a.npz") as t2:
        assert t1 != t2 and t1.name.endswith(".npz")
        assert io.is_temp_name(t1.name) and sorted(io.temp_files(tmp_path)) == sorted([t1, t2])
    assert not io.is_temp_name("a.npz") and not io.is_temp_name("notes.tmp.md")
    (tmp_path / "b.png.abcd1234.tmp.png").write_bytes(b"")  # left by a killed process
    assert [p.name for p in io.remove_temp_files(tmp_path)] == ["b.png.abcd1234.tmp.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz"]


def test_load_features_of_a_truncated_file_is_a_value_error(tmp_path: Path) -> None:
    """Defect 3 (library side): BadZipFile became a clear ValueError naming the file."""
    path = save_features(_features(), tmp_path / "f.npz")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable feature file"):
        load_features(path)


def test_folder_written_as_a_whole(tmp_path: Path, umask_022) -> None:
    from zippy import io

    target = tmp_path / "seq"
    with io.atomic_folder(target) as tmp:
        (tmp / "1.png").write_bytes(b"one")
    assert sorted(p.name for p in target.iterdir()) == ["1.png"] and target.stat().st_mode & 0o777 == 0o755
    with pytest.raises(OSError, match="No space"):
        with io.atomic_folder(target) as tmp:
            (tmp / "2.png").write_bytes(b"two")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in target.iterdir()) == ["1.png"]  # the old folder, whole
    with io.atomic_folder(target) as tmp:
        (tmp / "3.png").write_bytes(b"three")
    assert sorted(p.name for p in target.iterdir()) == ["3.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]  # no temporary or old folder left
