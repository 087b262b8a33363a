"""Hook names and argument names are a public contract: pinned here, documented everywhere."""

from __future__ import annotations

import ast
import inspect
import re

from segtrack.plugins.manager import hook_names, hookspecs

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

PINNED = {
    "settings_schema": [],
    "settings_loaded": ["settings"],
    "cli_commands": ["subparsers"],
    "fit_start": ["trainer", "run"],
    "epoch_start": ["trainer", "run", "epoch"],
    "train_batch_end": ["trainer", "run", "step"],
    "validation_batch_end": ["trainer", "run", "batch"],
    "validation_end": ["trainer", "run", "result"],
    "validation_metrics": ["trainer", "run", "result"],
    "epoch_end": ["trainer", "run", "epoch"],
    "checkpoint_saved": ["trainer", "run", "checkpoint"],
    "model_exported": ["trainer", "run", "export"],
    "fit_exception": ["trainer", "run", "error"],
    "fit_end": ["trainer", "run", "result"],
    "cross_validation_start": ["trainer", "info"],
    "cross_validation_end": ["trainer", "result"],
    "study_start": ["study"],
    "trial_links": ["study_id", "number"],
    "trial_end": ["trial"],
    "study_end": ["result"],
    "state_dict": [],
    "load_state_dict": ["state"],
}


def test_hook_names_and_arguments_are_pinned():
    assert sorted(PINNED) == hook_names()
    for name, args in PINNED.items():
        assert list(inspect.signature(getattr(hookspecs, name)).parameters) == args, name


def test_every_hook_documents_when_arguments_return_and_raise():
    for name in hook_names():
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc, f"{name} has no docstring"
        assert re.search(r"\bFires\b", doc), f"{name}: say when it fires"
        for arg in PINNED[name]:
            assert f":param {arg}:" in doc, f"{name}: document argument {arg!r}"
        assert ":return" in doc, f"{name}: say what a return value does"
        assert ":raises" in doc, f"{name}: say what raising does"


def _is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator  # @hookimpl(tryfirst=True)
    return (isinstance(target, ast.Name) and target.id.endswith("hookimpl")) or (
        isinstance(target, ast.Attribute) and target.attr == "hookimpl"
    )


def _hooks_implemented_by_tests() -> set[str]:
    """Names of the functions a test (core or plugin suite, test-support included) decorates with
    ``hookimpl``: a hook a test plugin implements, not a word that happens to occur in a test."""
    paths = [*(REPO / "tests").rglob("*.py"), *REPO.glob("plugins/*/tests/**/*.py")]
    return {
        node.name
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and any(_is_hookimpl(d) for d in node.decorator_list)
    }


def test_every_hook_is_in_the_readme_and_in_a_test():
    """Proves each hook has a README row with its exact signature (a substring such as `state_dict`
    matched `load_state_dict` and `model.state_dict()` before) and a test plugin implementing it."""
    readme = (REPO / "README.md").read_text()
    implemented = _hooks_implemented_by_tests()
    for name, args in PINNED.items():
        assert f"`{name}({', '.join(args)})`" in readme, f"README's hook reference lacks `{name}({', '.join(args)})`"
    assert set(hook_names()) <= implemented, f"no test plugin implements {sorted(set(hook_names()) - implemented)}"


def test_records_are_frozen():
    import dataclasses

    from segtrack.plugins import records

    for obj in vars(records).values():
        if dataclasses.is_dataclass(obj):
            assert obj.__dataclass_params__.frozen, obj.__name__


def test_every_hook_name_the_code_calls_is_a_hookspec():
    """Hook calls are by name: a misspelled name anywhere in the core or a first-party plugin fails here."""
    import re
    from pathlib import Path

    from segtrack.plugins.manager import hook_names

    root = Path(__file__).resolve().parents[1]
    sources = [*root.glob("src/segtrack/**/*.py"), *root.glob("plugins/*/src/*/*.py")]
    pattern = re.compile(
        r"\b(?:call|call_all_ranks|call_bounded|collect|has_implementations)\(\s*\"(\w+)\"|"
        r"\bcall_one\(\s*\w+,\s*\"(\w+)\""
    )
    called = {
        name for path in sources for match in pattern.finditer(path.read_text()) for name in match.groups() if name
    }
    assert len(called) >= 15, called
    assert called <= set(hook_names()), called - set(hook_names())
