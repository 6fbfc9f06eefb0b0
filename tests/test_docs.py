"""The examples of the README and of the package docstring run as written (with real images)."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", path.read_text(encoding="utf-8"), re.S)


def test_readme_has_python_examples() -> None:
    assert _python_blocks(REPO / "README.md"), "README.md lost its ```python examples"


@pytest.mark.parametrize("index", range(len(_python_blocks(REPO / "README.md"))))
def test_readme_python_example_runs(index: int, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    code = _python_blocks(REPO / "README.md")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    if "print(" in code:
        assert out.strip(), "the example printed nothing"
    if "inliers" in code:  # the API example: a photo against a mild warp of itself must match well
        _engine, n_matches, _, n_inliers, _ = out.split()
        assert int(n_matches) >= 100 and int(n_inliers) >= 50, out


def test_package_docstring_example_runs(photo) -> None:
    import cv2
    import numpy as np

    import zippy

    image1 = cv2.warpAffine(photo, np.float32([[1, 0.05, 6], [-0.05, 1, 12]]), photo.shape[1::-1])
    parser = doctest.DocTestParser()
    test = parser.get_doctest(zippy.__doc__, {"image0": photo, "image1": image1}, "zippy", "zippy/__init__.py", 0)
    assert test.examples, "the package docstring lost its example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def _text_files(*roots: str) -> list[Path]:
    files = []
    for root in roots:
        path = REPO / root
        candidates = [path] if path.is_file() else path.rglob("*")
        files += [p for p in candidates if p.is_file() and p.suffix in (".md", ".py", ".toml", ".cff", ".txt")]
    return files


def test_docs_state_facts_without_work_periods_or_machine_paths() -> None:
    word = re.compile(r"\bsessions?\b", re.I)  # pytest's scope="session" lives in tests/, not checked here
    machine = re.compile(r"(?<![\w.])/(work|home|root|Users|tmp)/")
    bad = []
    for path in _text_files("README.md", "CHANGELOG.md", "docs", "weights", "zippy", "eval", "apps", "tools"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if word.search(line) or (path.suffix == ".md" and machine.search(line)):
                bad.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:80]}")
    assert not bad, "\n".join(bad)
