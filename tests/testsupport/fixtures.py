"""Fixtures every suite shares (a pytest plugin, registered by the root conftest.py): a clean
environment per test, tiny settings and trainers, and fake installed distributions.

A suite tunes ``settings_factory`` and ``trainer_factory`` by overriding two fixtures in its own
conftest.py: ``tiny_settings`` (the overrides every fit starts from) and ``plugins_under_test``
(the installed plugins a trainer loads; none by default, so installed plugins never leak into
core tests)."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from testsupport.plugins import first_party_plugins
from testsupport.settings import TINY


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SEGTRACK_/MLFLOW_ variable leaks in from the caller; each test works in its own folder."""
    for key in list(os.environ):
        if key.startswith(("SEGTRACK_", "MLFLOW_")):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny_settings() -> Sequence[str]:
    """The overrides every ``settings_factory`` fit starts from (a suite's conftest may override it)."""
    return TINY


@pytest.fixture
def plugins_under_test() -> Sequence[str]:
    """Installed plugins ``trainer_factory`` loads. Empty: autoload off, only plugins passed in code.
    A plugin's suite names its own plugin: autoload on, the other first-party plugins disabled."""
    return ()


@pytest.fixture
def settings_factory(tmp_path: Path, tiny_settings: Sequence[str]) -> Callable[..., Any]:
    from segtrack.config.settings import load_settings

    def make(*overrides: str, config_file: Any = None, env: str | None = None) -> Any:
        return load_settings(config_file, env, [*tiny_settings, *overrides], project_dir=tmp_path)

    return make


@pytest.fixture
def trainer_factory(settings_factory: Callable[..., Any], plugins_under_test: Sequence[str]) -> Callable[..., Any]:
    """A trainer on tiny settings, the builtin progress plugin off unless ``builtins_off=False``."""
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    def make(
        *overrides: str,
        plugins: Iterable[Any] = (),
        strict: bool | None = None,
        builtins_off: bool = True,
        **parts: Any,  # model=, train_data=, ...: what a user passes the trainer in code
    ) -> SegmentationTrainer:
        settings = settings_factory(*overrides)
        disabled = ["progress"] if builtins_off else []
        if plugins_under_test:
            disabled += [name for name in first_party_plugins() if name not in plugins_under_test]
            manager = get_plugin_manager(settings, plugins, disabled=disabled, strict=strict)
        else:
            manager = get_plugin_manager(settings, plugins, autoload=False, disabled=disabled, strict=strict)
        return SegmentationTrainer(settings, plugin_manager=manager, **parts)

    return make


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Write an installed distribution (dist-info + module) that declares a segtrack entry point."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(dist: str, entry_name: str, module: str, source: str, target: str | None = None) -> Path:
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[segtrack.plugins]\n{entry_name} = {target or module}\n")
        importlib.invalidate_caches()
        sys.modules.pop(module, None)
        return site

    return make
