"""Fault suite: the HPatches pipeline's cache and result files under damage and kills (defects 3 and 6)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from faults_helpers import REPO, leftovers, subprocess_env, textured

from zippy_eval.hpatches.generate import GeneratorConfig, generate_sequences
from zippy_eval.hpatches.pipeline import HPatchesConfig, Setting, run

SETTING = Setting(96, 128, 100)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    import cv2

    src = tmp_path_factory.mktemp("photos")
    photos = []
    for i in range(3):
        photos.append(src / f"p{i}.png")
        cv2.imwrite(str(photos[-1]), textured(120, 160, seed=i))
    out = tmp_path_factory.mktemp("hp")
    generate_sequences(photos, out, GeneratorConfig(n=3, seed=0, num_images=3, max_side=160))
    return out


def _conf(**kw) -> HPatchesConfig:
    return HPatchesConfig(methods=kw.pop("methods", ("orb",)), settings=(SETTING,), threads=1, **kw)


def _results(summary: Path) -> tuple[list, dict]:
    doc = json.loads(summary.read_text())
    return doc["rows"], doc["aggregates"]


def _cache_files(out: Path) -> list[Path]:
    return sorted((out / "cache").rglob("*.npz"))


def test_truncated_cache_entry_is_recomputed(dataset: Path, tmp_path: Path, caplog) -> None:
    """Defect 3: a truncated cache .npz crashed every rerun (BadZipFile traceback)."""
    ref = _results(run(_conf(), dataset, tmp_path / "out"))
    victim = _cache_files(tmp_path / "out")[1]
    victim.write_bytes(victim.read_bytes()[:200])
    with caplog.at_level("WARNING"):
        again = _results(run(_conf(), dataset, tmp_path / "out"))
    assert again == ref
    assert any("damaged cache entry" in r.message for r in caplog.records)
    assert np.load(victim)["keypoints"].shape[1] == 2  # rewritten whole


def test_invalid_cache_entry_is_recomputed_not_an_unreadable_image(dataset: Path, tmp_path: Path) -> None:
    """Defect 3: an entry failing validation was reported as an "unreadable image", its sequence dropped."""
    ref = _results(run(_conf(), dataset, tmp_path / "out"))
    victim = _cache_files(tmp_path / "out")[0]
    with np.load(victim) as z:
        arrays = dict(z)
    arrays["keypoints"] = arrays["keypoints"][:, :1]  # [N, 1]: fails the Features checks
    with open(victim, "wb") as f:
        np.savez(f, **arrays)
    summary = run(_conf(), dataset, tmp_path / "out")
    doc = json.loads(summary.read_text())
    assert doc["skipped_sequences"] == {}
    assert _results(summary) == ref


def test_garbage_index_is_ignored(dataset: Path, tmp_path: Path) -> None:
    ref = _results(run(_conf(), dataset, tmp_path / "out"))
    for index in (tmp_path / "out" / "cache").rglob("index.json"):
        index.write_text("[1, 2")
    assert _results(run(_conf(), dataset, tmp_path / "out")) == ref


KILL_AT_SECOND_SEQUENCE = """
import os, signal, sys
from zippy_eval.hpatches import pipeline as P

real = P.evaluate_sequence
seen = []


def killed_at_the_second(*args, **kw):
    seen.append(1)
    if len(seen) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kw)


P.evaluate_sequence = killed_at_the_second
conf = P.HPatchesConfig(methods=("orb",), settings=(P.Setting(96, 128, 100),), threads=1)
P.run(conf, sys.argv[1], sys.argv[2])
"""


def test_index_is_written_per_sequence(dataset: Path, tmp_path: Path) -> None:
    """Defect 6: the index was written only at the end of a dataset, so SIGKILL lost all finished work."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_SECOND_SEQUENCE, str(dataset), str(out)],
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    indexes = list((out / "cache").rglob("index.json"))
    assert len(indexes) == 1
    index = json.loads(indexes[0].read_text())
    # killed while evaluating the second sequence: the features of both are indexed (3 images each)
    assert len(index) == 6 and len({k.split("/")[0] for k in index}) == 2, index


def test_table_and_plots_never_disagree_with_the_summary(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """Defect 6: table.md and the plot were written before summary.json: a kill between them mismatched them."""
    out = tmp_path / "out"
    run(_conf(), dataset, out)

    def killed(*args, **kw):  # the process dies while it writes summary.json
        raise SystemExit(137)

    monkeypatch.setattr("zippy_eval.results.write_summary", killed)
    with pytest.raises(SystemExit):
        run(_conf(methods=("orb", "akaze")), dataset, out)
    summary = json.loads((out / "summary.json").read_text())
    table = out / "table.md"
    if table.exists():  # any table beside the summary is the summary's
        assert ("| akaze |" in table.read_text()) == ("akaze" in summary["methods"])
    for name in summary["plots"].values():
        assert not (out / name).exists() or table.exists()
    assert leftovers(out) == []
    monkeypatch.undo()
    run(_conf(methods=("orb", "akaze")), dataset, out)  # a rerun writes the whole set
    assert "| akaze |" in table.read_text()
