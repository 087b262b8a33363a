"""A fit's plugins and settings, opened once: the manager built (or taken), the settings resolved
with every plugin's schema, ``settings_loaded`` fired on every rank."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from segtrack.config.settings import Settings, read_settings, resolve_settings
from segtrack.errors import ConfigError
from segtrack.plugins.manager import PluginManager, get_plugin_manager


def open_plugins(
    settings: Any, plugins: Iterable[Any], plugin_manager: PluginManager | None, rank: int
) -> tuple[PluginManager, Settings]:
    """``settings``: ``None`` (every layer: defaults, configs/settings.toml, ``SEGTRACK_*``), a dict of
    only what it changes (over the built-in defaults), ``load_settings(...)``, or ``Settings``."""
    if settings is not None and not isinstance(settings, (dict, Settings)) and not hasattr(settings, "as_dict"):
        raise ConfigError(
            f"settings is a {type(settings).__name__}: pass None, a dict such as "
            "{'checkpoint': {'monitor': 'val_dice'}}, or segtrack.load_settings(...)"
        )
    plugins = list(plugins)
    if plugin_manager is not None and plugins:
        raise ConfigError("pass plugins either in `plugins` or inside `plugin_manager`, not both")
    settings = read_settings() if settings is None else settings
    hooks = plugin_manager or get_plugin_manager(settings, plugins, rank=rank)
    hooks.rank = rank
    resolved = resolve_settings(settings, hooks)
    hooks.call_all_ranks("settings_loaded", settings=resolved)
    return hooks, resolved
