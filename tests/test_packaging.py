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


def _imports(folder: str) -> dict[str, set[str]]:
    """{file: top-level modules it imports} for the .py files under ``folder``."""
    import ast

    out = {}
    for path in (REPO / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(REPO))] = names
    return out


def test_dependencies_point_one_way_and_never_into_tools() -> None:
    tools = {p.stem for p in (REPO / "tools").glob("*.py")} | {"tools"}
    forbidden = {"zippy": {"zippy_eval", "zippy_apps", "eval", "apps"}, "eval": {"zippy_apps", "apps"}, "apps": set()}
    bad = []
    for folder, upward in forbidden.items():
        for path, names in _imports(folder).items():
            if names & (upward | tools):
                bad.append(f"{path} imports {sorted(names & (upward | tools))}")
    assert not bad, "installed code imports against apps -> eval -> zippy or from tools/: " + "; ".join(bad)


def test_research_tools_are_not_installed() -> None:
    conf = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not any(p.split(".")[0] == "tools" for p in conf["packages"]), conf["packages"]
    assert "tools" not in conf["package-dir"].values()
    assert not (REPO / "tools" / "__init__.py").exists(), "tools/ is a folder of scripts, not a package"
    for folder in ("zippy", "eval", "apps"):
        stray = {p.stem for p in (REPO / folder).rglob("*.py")} & {p.stem for p in (REPO / "tools").glob("*.py")}
        assert not stray, f"{folder}/ holds research modules of tools/: {sorted(stray)}"
