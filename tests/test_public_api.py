"""The public surface: plugins and examples import only ``segtrack`` itself, every public name
resolves, and the core's modules and sub-packages import one another without a cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import segtrack

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "src" / "segtrack"
# public modules besides the package itself: the framework adapters (each imports its framework)
PUBLIC_MODULES = ("segtrack.integrations.lightning", "segtrack.integrations.ignite")


def _imports(path: Path) -> list[str]:
    """Every module an import statement in ``path`` names (top level and inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_plugins_and_examples_import_only_the_public_api():
    sources = [*REPO.glob("plugins/*/src/**/*.py"), *REPO.glob("examples/**/*.py")]
    assert len(sources) > 20
    private = {
        f"{path.relative_to(REPO)}: {name}"
        for path in sources
        for name in _imports(path)
        if name.startswith("segtrack.")
        and name.removeprefix("segtrack.") not in segtrack.__all__
        and not name.startswith(PUBLIC_MODULES)
    }
    assert not private, "import these from `segtrack` (add them to segtrack.__all__ if they are public):\n" + "\n".join(
        sorted(private)
    )


def test_every_public_name_resolves_and_import_stays_light():
    for name in segtrack.__all__:
        assert getattr(segtrack, name) is not None, name
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, segtrack; print(sorted({'torch', 'dynaconf', 'numpy'} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def _core_graph() -> dict[str, set[str]]:
    modules = {
        ".".join(p.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in CORE.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = {name for name in _imports(path) if name in modules and name != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_core_modules_import_without_cycles():
    # ``segtrack`` itself (the public surface) re-exports from below; leave it out of the graph
    graph = {m: {d for d in deps if d != "segtrack"} for m, deps in _core_graph().items() if m != "segtrack"}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_sub_packages_form_layers():
    """Between sub-packages, imports run one way: cli > loop > inference > models/data > config, ...
    (the package graph has no cycle)."""
    packages: dict[str, set[str]] = {}
    for module, deps in _core_graph().items():
        if module.count(".") < 2:
            continue  # top-level modules (cli, errors, the public surface)
        package = module.split(".")[1]
        for dep in deps:
            if dep.count(".") >= 2 and dep.split(".")[1] != package:
                packages.setdefault(package, set()).add(dep.split(".")[1])
    assert _cycle(packages) is None, " -> ".join(_cycle(packages) or [])


def test_every_segtrack_type_in_a_public_signature_is_exported():
    """A public signature never names a segtrack type a user cannot import from ``segtrack``."""
    import inspect
    import re

    from segtrack.integrations.ignite import SegtrackHandler
    from segtrack.integrations.lightning import SegtrackCallback

    defined = set()
    for path in CORE.rglob("*.py"):
        defined |= {a or b for a, b in re.findall(r"^class (\w+)|^([A-Z]\w+) = ", path.read_text(), re.M)}
    public = [getattr(segtrack, name) for name in segtrack.__all__ if inspect.isclass(getattr(segtrack, name))]
    public += [getattr(segtrack, name) for name in segtrack.__all__ if inspect.isfunction(getattr(segtrack, name))]
    hidden = set()
    for owner in [*public, SegtrackCallback, SegtrackHandler]:
        members = inspect.getmembers(owner) if inspect.isclass(owner) else [(owner.__name__, owner)]
        for name, member in members:
            if name.startswith("_") and name != "__init__":
                continue
            function = member.fget if isinstance(member, property) else member
            for annotation in getattr(function, "__annotations__", {}).values():
                for identifier in re.findall(r"\w+", str(annotation)):
                    adapters = {"SegtrackCallback", "SegtrackHandler"}  # public in their own modules
                    if identifier in defined and identifier not in {*segtrack.__all__, *adapters}:
                        hidden.add(f"{getattr(owner, '__name__', owner)}.{name}: {identifier}")
    assert not hidden, sorted(hidden)
