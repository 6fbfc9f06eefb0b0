"""Shared pieces of the fault suite (tests/test_faults_*.py): tiny inputs, the CLI in a subprocess, leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["--model", "zippypoint_small", "--engine", "fp32"]
"""The shipped small network on the fp32 engine: no int8 conversion at load (fast start-up)."""


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """RGB uint8 [h, w, 3]: random rectangles and discs on a gradient (many corners)."""
    rng = np.random.default_rng(seed)
    img = np.dstack([np.tile(np.linspace(60, 200, w), (h, 1))] * 3).astype(np.uint8)
    for _ in range(max(8, h * w // 800)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(3, 20)), y0 + int(rng.integers(3, 20))), color, -1)
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(2, 10)), color, -1)
    return img


def write_image(path: Path, h: int = 64, w: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(textured(h, w, seed), cv2.COLOR_RGB2BGR))
    return path


def image_folder(folder: Path, n: int, h: int = 64, w: int = 64) -> Path:
    for i in range(n):
        write_image(folder / f"{i:03d}.png", h, w, seed=i)
    return folder


def zippy_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "zippy_apps.cli", *argv]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_zippy(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        zippy_cmd(*argv), capture_output=True, text=True, timeout=timeout, env=subprocess_env(), cwd=REPO
    )


def leftovers(folder: Path) -> list[Path]:
    """Temporary / partial files under ``folder``: what an interrupted write may leave."""
    marks = (".tmp", ".partial")
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and any(m in p.name for m in marks))


_ZYGOTE = r"""
import json, os, sys
# the heavy imports once; no computation here, so no thread pool exists when the children are forked
import cv2, numpy, torch  # noqa: F401
import torch._dynamo, torch.optim  # noqa: F401  (AdamW imports dynamo: 1.5 s)
import zippy.extractor, zippy.train.trainer, zippy_eval.hpatches.pipeline, zippy_eval.methods  # noqa: F401
import zippy_apps.cmd_detect, zippy_apps.cmd_stream, zippy_apps.cmd_train  # noqa: F401
import zippy_apps.cmd_eval_hpatches  # noqa: F401
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: F401
from zippy.matching import match_hamming
from zippy_apps.cli import main

match_hamming(numpy.zeros((2, 32), numpy.uint8), numpy.zeros((3, 32), numpy.uint8))  # load the numba kernel

out = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            rc = main(req["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    out.write(json.dumps({"pid": pid}) + "\n")
    out.flush()
    _, status = os.waitpid(pid, 0)
    out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    out.flush()
"""


class Zygote:
    """A process that imports torch, OpenCV and zippy once and forks a child per `zippy` command.

    Starting a command then costs its own work only, not the imports (torch alone takes seconds on a busy
    machine): the kill tests start each command 11 times. Use as a context manager.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            cwd=REPO,
        )
        self.count = 0
        self.pid: int | None = None

    def start(self, argv: list[str]) -> int:
        """Fork a child running `zippy *argv`; returns its pid."""
        self.count += 1
        self.log = self.log_dir / f"run{self.count}.log"
        self.proc.stdin.write(json.dumps({"argv": list(argv), "log": str(self.log)}) + "\n")
        self.proc.stdin.flush()
        self.pid = json.loads(self.proc.stdout.readline())["pid"]
        return self.pid

    def poll(self) -> bool:
        """True while the child runs."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # a finished child stays a zombie until the zygote reaps it: look at its state
        try:
            state = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def wait(self) -> int:
        """The child's exit code (negative: killed by that signal)."""
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        return json.loads(line)["rc"]

    def kill(self) -> None:
        """SIGKILL the running child (by its pid)."""
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def run(self, argv: list[str]) -> tuple[int, str]:
        self.start(argv)
        rc = self.wait()
        return rc, self.log.read_text(errors="replace")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
