"""Atomic file writes: every file the library, the evaluation and the apps write goes through here.

A file is written to a temporary name beside its target (unique: ``<name>.<random>.tmp<suffix>``, the
suffix kept so writers that infer the format from it still work), flushed to disk (fsync), given the
mode a plain ``open()`` would give it (``0o666 & ~umask``; ``mkstemp`` alone leaves 0600) and moved
over the target with ``os.replace``. On any error, or when the process is interrupted, the temporary
file is removed and the target is left as it was: a reader sees the old file or the new one, never a
half-written one. A process killed with SIGKILL can leave a ``*.tmp*`` file beside the target (never a
corrupt target); :func:`temp_files` finds such leftovers.

Examples::

    with atomic_path("out/model.pt") as tmp:   # writers that need a file name
        torch.save(obj, tmp)
    write_bytes("out/a.png", data)
    write_text("out/table.md", text)
    f = AtomicFile("run.jsonl", "w")         # streamed outputs: commit() at the end, discard() on error
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

__all__ = [
    "AtomicFile",
    "atomic_folder",
    "atomic_path",
    "file_mode",
    "is_temp_name",
    "remove_temp_files",
    "remove_temps_of",
    "temp_files",
    "write_bytes",
    "write_text",
]

TEMP_MARK = ".tmp"
"""Every temporary name holds ``<name>.<random>.tmp``; :func:`temp_files` looks for it."""


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide and not thread-safe)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666 & ~umask`` (0o644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def _target(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder (give a file name)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms / file systems cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _finish(tmp: Path, path: Path) -> None:
    """fsync the written temporary file, give it the umask's mode and move it over ``path``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class AtomicFile:
    """An open temporary file that becomes ``path`` on :meth:`commit` (for outputs written over time).

    Args:
        path: the target file (parent folders are created; an existing folder there raises IsADirectoryError).
        mode: "w" (text, utf-8) or "wb".
        buffering: as in :func:`open` (1: line-buffered text).

    Use as a context manager (commit on success, discard on an exception) or call :meth:`commit` /
    :meth:`discard` yourself; :meth:`discard` is safe to call twice and after :meth:`commit`.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "w", buffering: int = -1) -> None:
        if mode not in ("w", "wb"):
            raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
        self.path = _target(path)
        fd, tmp = tempfile.mkstemp(
            prefix=self.path.name + ".", suffix=TEMP_MARK + self.path.suffix, dir=self.path.parent
        )
        self.tmp = Path(tmp)
        try:
            kwargs: dict[str, Any] = {"encoding": "utf-8"} if mode == "w" else {}
            self.file: IO[Any] = os.fdopen(fd, mode, buffering=buffering, **kwargs)
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise
        self.done = False

    def write(self, data: Any) -> int:
        """Write to the temporary file."""
        return self.file.write(data)

    def commit(self) -> Path:
        """Close, fsync and move the temporary file over the target; returns the target path."""
        if self.done:
            raise ValueError(f"{self.path} was already committed or discarded")
        try:
            self.file.close()
            _finish(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self.done = True
        return self.path

    def discard(self) -> None:
        """Close and delete the temporary file; the target is untouched."""
        if not self.file.closed:
            with contextlib.suppress(OSError):
                self.file.close()
        self.tmp.unlink(missing_ok=True)
        self.done = True

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and not self.done:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path`` atomically.

    The temporary name ends with the target's suffix (``x.npz.<random>.tmp.npz``) so writers that pick
    the format from it (matplotlib, OpenCV, torch) work. On an exception the temporary file is removed
    and ``path`` is untouched.
    """
    path = _target(path)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_MARK + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _finish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path`` to fill; on success it takes the place of ``path``.

    For outputs written as a whole folder (a generated sequence). The folder gets the umask's mode; an
    existing ``path`` is moved aside, the new folder renamed into place and the old one deleted, so a
    reader sees the old folder or the complete new one. On an exception the temporary folder is deleted.
    """
    import shutil

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"cannot write the folder {path}: a file is there")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=TEMP_MARK, dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=path.name + ".", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders created). Returns the path."""
    with AtomicFile(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (utf-8) to ``path`` atomically (parent folders created). Returns the path."""
    with AtomicFile(path, "w") as f:
        f.write(text)
    return Path(path)


_TEMP_RE = re.compile(r"^(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp(?P<suffix>(\.[^.]*)?)$")


def is_temp_name(name: str) -> bool:
    """True for a name this module gives temporary files: ``<target>.<8 random>.tmp<target suffix>``."""
    m = _TEMP_RE.match(name)
    return m is not None and Path(m["target"]).suffix == m["suffix"]


def temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Temporary files of this module under ``folder``, e.g. left by a process killed with SIGKILL."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f"*{TEMP_MARK}*") if recursive else folder.glob(f"*{TEMP_MARK}*")
    return sorted(p for p in found if p.is_file() and is_temp_name(p.name))


def remove_temps_of(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of target ``path`` left by a killed writer (``<name>.<random>.tmp<suffix>``).

    Safe in a shared folder: only the leftovers of this one target are touched. Returns the removed paths.
    """
    path = Path(path)
    removed = []
    if path.parent.is_dir():
        for p in path.parent.glob(f"{glob_escape(path.name)}.*{TEMP_MARK}*"):
            m = _TEMP_RE.match(p.name)
            if m is not None and m["target"] == path.name and is_temp_name(p.name) and p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
                    logger.warning("removed %s, the temporary file of an interrupted write", p)
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    import glob

    return glob.escape(name)


def remove_temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the leftovers :func:`temp_files` finds (call at the start of a run that owns ``folder``).

    Returns the removed paths (each is logged). Never call it on a folder another running process writes to.
    """
    removed = []
    for p in temp_files(folder, recursive):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
            logger.warning("removed %s, the temporary file of an interrupted write", p)
    return removed
