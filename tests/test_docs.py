"""docs/architecture.md and CONTRIBUTING.md stay true: their module lists, hook callers, entry points,
bench scripts and test-support modules are read back and compared with the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from segtrack.plugins.manager import hook_names

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "segtrack"
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text()
HOOK_CALL = re.compile(r'\.(?:call|call_all_ranks|collect|call_bounded)\(\s*"(\w+)"|\.call_one\([^,]+,\s*"(\w+)"')


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` in docs/architecture.md, as cells."""
    section = ARCHITECTURE.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|---"):
            continue
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[1:]  # without the header


def _ticked(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def test_every_core_module_is_in_the_architecture_and_nothing_else():
    documented = {row[0].strip("`/"): _ticked(row[1]) for row in _table("## Layers")}
    actual = {
        package.name: {m.stem for m in package.glob("*.py") if m.stem != "__init__"}
        for package in CORE.iterdir()
        if (package / "__init__.py").is_file()
    }
    assert documented == actual


def test_the_hook_callers_table_is_who_calls_each_hook():
    documented: dict[str, set[str]] = {}
    for hooks, callers in _table("## Who emits which hook"):
        for hook in _ticked(hooks):
            documented[hook] = _ticked(callers)
    actual: dict[str, set[str]] = {}
    for path in CORE.rglob("*.py"):
        if path.name == "manager.py":
            continue  # the dispatcher itself
        for match in HOOK_CALL.finditer(path.read_text()):
            hook = match.group(1) or match.group(2)
            actual.setdefault(hook, set()).add(str(path.relative_to(CORE)))
    assert documented == actual
    assert set(documented) == set(hook_names())  # every hook has its emitter documented


def test_the_entry_points_table_is_what_the_plugins_register():
    documented = {}
    section = ARCHITECTURE.split("| entry point (`segtrack.plugins`) | distribution |", 1)[1]
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, folder = (cell.strip() for cell in line.strip("|").split("|"))
        documented[name.strip("`")] = folder
    actual = {}
    for pyproject in ROOT.glob("plugins/*/pyproject.toml"):
        entries = tomllib.loads(pyproject.read_text())["project"]["entry-points"]["segtrack.plugins"]
        actual.update({name: f"plugins/{pyproject.parent.name}" for name in entries})
    assert documented == actual


def test_contributing_lists_every_bench_and_test_support_module():
    benches = {p.name for p in (ROOT / "bench").glob("bench_*.py")}
    assert benches <= set(re.findall(r"`(bench_\w+\.py)`", CONTRIBUTING))
    support = {p.name for p in (ROOT / "tests" / "testsupport").glob("*.py") if p.stem != "__init__"}
    assert support <= set(re.findall(r"^\s+(\w+\.py)\s", CONTRIBUTING, re.M))


README = (ROOT / "README.md").read_text()
RUNS_AS_PRINTED = "# runs as printed"


@pytest.mark.slow  # a DynUNet fit: `make reliability` runs it (make test is at its 10-minute budget)
def test_readme_snippets_marked_runs_as_printed_run_as_printed(tmp_path):
    """Every README Python block that says it runs as printed does, copied as it stands, in a fresh
    folder (installed plugins off: the snippet is about the loop, not about tracking)."""
    import os
    import subprocess
    import sys

    blocks = [b.split("```", 1)[0] for b in README.split("```python\n")[1:]]
    complete = [b for b in blocks if b.startswith(RUNS_AS_PRINTED)]
    assert complete, f"no README block starts with {RUNS_AS_PRINTED!r}"
    env = {**os.environ, "SEGTRACK_PLUGINS__AUTOLOAD": "false", "OMP_NUM_THREADS": "1"}
    for number, block in enumerate(complete):
        script = tmp_path / f"snippet{number}.py"
        script.write_text(block)
        out = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0 and "Traceback" not in out.stderr, block + out.stderr[-3000:]
