"""Packaging and CI wiring: every package is installed, CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject() -> None:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    mapping = {v: k for k, v in conf["package-dir"].items()}  # folder -> import name
    found = set()
    for init in REPO.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(REPO).parts
        if rel[0] in mapping:
            found.add(".".join((mapping[rel[0]], *rel[1:])))
    assert found == listed, f"pyproject packages differ: missing {found - listed}, extra {listed - found}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci.splitlines()
    assert any("zippy demo" in c for c in commands)
