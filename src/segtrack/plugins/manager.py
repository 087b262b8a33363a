"""Build one plugin manager per trainer and call hooks with each plugin isolated."""

from __future__ import annotations

import difflib
import functools
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from segtrack.errors import ConfigError, PluginHookError, PluginLoadError
from segtrack.plugins import hookspecs
from segtrack.plugins.records import PluginFailure

ENTRY_POINT_GROUP = "segtrack.plugins"
log = logging.getLogger("segtrack.plugins")


@dataclass(frozen=True)
class PluginInfo:
    """A registered plugin: its name (the one identity), where it came from, the hooks it implements."""

    name: str
    source: str  # "builtin", "entry point" or "code"
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class LoadFailure:
    name: str
    distribution: str | None
    error: str


def builtin_plugins() -> dict[str, Any]:
    """Plugins shipped with the core, by name (instances are made per manager)."""
    from segtrack.plugins.progress import ProgressPlugin

    return {"progress": ProgressPlugin}


# installed_entry_points' last answer, by the state of the import path it was read from
_installed: dict[tuple[Any, ...], dict[str, Any]] = {}
_SETTLED_NS = 2_000_000_000  # a folder changed more recently than this is not trusted (coarse timestamps)


def installed_entry_points() -> dict[str, Any]:
    """The ``segtrack.plugins`` entry points installed, by name. Reading them opens every
    distribution's metadata (~10 ms with a few hundred installed), so the last answer is kept while
    the import path is unchanged: the same ``sys.path`` and ``sys.meta_path``, and each path
    entry's modification time (installing or removing a distribution adds or removes a
    ``*.dist-info`` folder there: importlib's own directory cache relies on the same). An entry
    changed in the last 2 s is not trusted (two changes within one timestamp tick look like one)."""
    key = _import_path_state()
    if key is not None and key in _installed:
        return dict(_installed[key])
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if key is not None:
        _installed.clear()
        _installed[key] = found
    return dict(found)


def _import_path_state() -> tuple[Any, ...] | None:
    """``sys.path`` with each entry's modification time, and the meta-path finders; None when an
    entry changed too recently to tell a later change in the same tick apart."""
    now, entries = time.time_ns(), []
    for entry in sys.path:
        folder = entry or os.getcwd()  # "" is the working directory
        try:
            mtime: int | None = os.stat(folder).st_mtime_ns
        except (OSError, TypeError, ValueError):
            mtime = None  # missing (its creation changes the key) or not a path
        if mtime is not None and now - mtime < _SETTLED_NS:
            return None
        entries.append((folder, mtime))
    return tuple(entries), tuple(id(finder) for finder in sys.meta_path)


class PluginManager:
    """A pluggy manager plus isolated dispatch, failure accounting and plugin metadata."""

    def __init__(self, strict: bool = False, rank: int = 0, fit_end_timeout: float = 120.0):
        self.pm = pluggy.PluginManager("segtrack")
        self.pm.add_hookspecs(hookspecs)
        self.strict = strict
        self.rank = rank
        self.fit_end_timeout = fit_end_timeout
        self.plugin_info: dict[str, PluginInfo] = {}
        self.load_failures: list[LoadFailure] = []
        self._failures: dict[tuple[str, str], list] = {}
        self._impls: dict[str, list[tuple[str, Any, tuple[str, ...]]]] = {}
        self.disabled: frozenset[str] = frozenset()
        self.installed: frozenset[str] | None = None  # entry-point names seen by get_plugin_manager

    # -- registration ---------------------------------------------------------------------------

    def register(
        self, plugin: Any, name: str, source: str, distribution: str | None = None, version: str | None = None
    ) -> None:
        if isinstance(plugin, type):
            plugin = plugin()  # a class entry point gets a fresh instance per manager
        if name in self.plugin_info:
            raise PluginLoadError(f"two plugins are named {name!r}: rename one (a plugin's name must be unique)")
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            detail = next(
                (line.strip() for line in str(exc).splitlines() if line.startswith("Argument")),
                str(exc).splitlines()[-1],
            )
            raise PluginLoadError(
                f"plugin {name!r}: hook {getattr(exc, 'hook', '?')}: {detail}: a hookimpl takes "
                f"only argument names its hook declares (`segtrack plugins --hooks`)"
            ) from None
        hooks = []
        for hook_caller in self.pm.get_hookcallers(plugin) or []:
            for impl in hook_caller.get_hookimpls():
                if impl.plugin is plugin and (impl.hookwrapper or impl.wrapper):
                    self.pm.unregister(plugin)
                    raise PluginLoadError(
                        f"plugin {name!r}: hook {hook_caller.name!r} is a wrapper; segtrack calls each "
                        f"implementation on its own: drop hookwrapper=/wrapper= from its hookimpl"
                    )
            hooks.append(hook_caller.name)
        self.plugin_info[name] = PluginInfo(
            name=name, source=source, distribution=distribution, version=version, hooks=tuple(sorted(hooks))
        )
        self._impls.clear()

    def names(self) -> list[str]:
        return list(self.plugin_info)

    def known_names(self) -> set[str]:
        """Names a settings section may have: plugins registered, installed (loaded or not) or disabled."""
        installed = self.installed if self.installed is not None else frozenset(installed_entry_points())
        return set(self.plugin_info) | installed | set(self.disabled)

    def get_plugin(self, name: str) -> Any:
        return self.pm.get_plugin(name)

    # -- dispatch -------------------------------------------------------------------------------

    def _implementations(self, hook: str) -> list[tuple[str, Any, tuple[str, ...]]]:
        impls = self._impls.get(hook)
        if impls is None:
            if hook not in _hook_set():
                raise ValueError(f"segtrack called {hook!r}, which is not a hook in segtrack.plugins.hookspecs")
            caller = getattr(self.pm.hook, hook)
            # pluggy's order: last registered first, tryfirst/trylast respected
            impls = [(i.plugin_name, i.function, tuple(i.argnames)) for i in reversed(caller.get_hookimpls())]
            self._impls[hook] = impls
        return impls

    def has_implementations(self, hook: str) -> bool:
        """Whether any plugin implements ``hook`` (lets the loop skip building hot-path records)."""
        return bool(self._implementations(hook))

    def call(self, hook: str, /, **kwargs: Any) -> None:
        """Call every implementation of ``hook`` (rank 0 only); a raising one is reported, not fatal."""
        if self.rank == 0:
            self._run(hook, kwargs)

    def call_all_ranks(self, hook: str, /, **kwargs: Any) -> None:
        self._run(hook, kwargs)

    def collect(self, hook: str, /, **kwargs: Any) -> dict[str, Any]:
        """Each plugin's return value of ``hook``, by plugin name (None values dropped)."""
        return self._run(hook, kwargs)

    def call_one(self, plugin_name: str, hook: str, /, **kwargs: Any) -> None:
        """Call ``hook`` of one plugin only (e.g. ``load_state_dict`` with its own state)."""
        self._run(hook, kwargs, only=plugin_name)

    def _run(self, hook: str, kwargs: Mapping[str, Any], only: str | None = None) -> dict[str, Any]:
        results = {}
        for plugin, func, argnames in self._implementations(hook):
            if only is not None and plugin != only:
                continue
            try:
                value = func(*[kwargs[a] for a in argnames])
            except Exception as exc:  # isolation is the point: any plugin error is contained
                if hook == "settings_loaded" and isinstance(exc, ConfigError):
                    raise
                self.report_failure(plugin, hook, exc)
                continue
            if value is not None:
                results[plugin] = value
        return results

    def call_bounded(self, hook: str, timeout: float, /, **kwargs: Any) -> None:
        """Like ``call``, but each implementation gets at most ``timeout`` seconds, or the plugin's
        own ``<hook>_timeout`` attribute where that is larger (a tracker draining within its own
        documented bound must not be cut short by the limit meant for hung plugins)."""
        if self.rank != 0:
            return
        for plugin, func, argnames in self._implementations(hook):
            own = getattr(self.pm.get_plugin(plugin), f"{hook}_timeout", None)
            limit = max(timeout, own) if isinstance(own, (int, float)) else timeout
            outcome: list[BaseException] = []

            def target(
                func: Any = func, argnames: tuple[str, ...] = argnames, outcome: list[BaseException] = outcome
            ) -> None:
                try:
                    func(*[kwargs[a] for a in argnames])
                except BaseException as exc:  # reported on the caller's thread
                    outcome.append(exc)

            worker = threading.Thread(target=target, name=f"segtrack-{plugin}-{hook}", daemon=True)
            worker.start()
            worker.join(limit)
            if worker.is_alive():
                self.report_failure(
                    plugin,
                    hook,
                    TimeoutError(f"still running after {limit:g} s (plugins.fit_end_timeout); left behind"),
                )
            elif outcome and isinstance(outcome[0], Exception):
                self.report_failure(plugin, hook, outcome[0])
            elif outcome:
                raise outcome[0]

    def report_failure(self, plugin: str, hook: str, exc: BaseException) -> None:
        """A plugin misbehaved in ``hook``: raise under strict, else report once and count."""
        if self.strict:
            raise PluginHookError(plugin, hook, exc) from exc
        entry = self._failures.get((plugin, hook))
        if entry is None:
            summary = f"{type(exc).__name__}: {exc}"
            self._failures[(plugin, hook)] = [1, summary]
            tb = "".join(traceback.format_exception(exc))
            log.warning(
                "plugin %r failed in hook %r and was skipped (training continues; later failures of "
                "this hook are counted, not repeated):\n%s",
                plugin,
                hook,
                tb,
            )
        else:
            entry[0] += 1

    def failures(self) -> tuple[PluginFailure, ...]:
        return tuple(PluginFailure(plugin=p, hook=h, count=n, error=e) for (p, h), (n, e) in self._failures.items())


def get_plugin_manager(
    settings: Any = None,
    plugins: Iterable[Any] = (),
    *,
    autoload: bool | None = None,
    disabled: Iterable[str] | None = None,
    strict: bool | None = None,
    rank: int = 0,
) -> PluginManager:
    """The one factory: specs, blocked names, builtins, entry points, code plugins, check_pending.

    Arguments override the ``plugins.*`` settings. ``plugins`` are objects (or classes) passed in
    code; each is named by its ``name`` attribute, else its lower-case class name.
    """
    section = _plugin_settings(settings)
    autoload = section.get("autoload", True) if autoload is None else autoload
    disabled = list(section.get("disabled", []) if disabled is None else disabled)
    strict = section.get("strict", False) if strict is None else strict
    manager = PluginManager(strict=strict, rank=rank, fit_end_timeout=section.get("fit_end_timeout", 120.0))

    builtins, available = builtin_plugins(), installed_entry_points()
    manager.installed = frozenset(available)
    _block(manager, disabled, set(builtins) | set(available))
    for name, factory in builtins.items():
        if not manager.pm.is_blocked(name):
            manager.register(factory, name, "builtin", "segtrack", _core_version())
    if autoload:
        _load_entry_points(manager, available, strict)
    register_code_plugins(manager, plugins)
    return manager


def register_code_plugins(manager: PluginManager, plugins: Iterable[Any]) -> None:
    """Plugins passed in code, each named by its ``name`` attribute, else its lower-case class name."""
    for plugin in plugins:
        given = getattr(plugin, "name", None)
        code_name = (
            given if isinstance(given, str) else (plugin if isinstance(plugin, type) else type(plugin)).__name__.lower()
        )
        manager.register(plugin, code_name, "code", None, None)
    _check_hook_names(manager)


def _block(manager: PluginManager, disabled: list[str], known: set[str]) -> None:
    """Block disabled names before anything is imported; a name that is no plugin is an error."""
    unknown = [n for n in disabled if n not in known]
    if unknown:
        hints = {n: difflib.get_close_matches(n, sorted(known), n=1) for n in unknown}
        detail = ", ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
        raise ConfigError(
            f"plugins.disabled names unknown plugin(s) {detail}: known plugins are "
            f"{', '.join(sorted(known)) or 'none'}; remove the name or install the plugin"
        )
    for name in disabled:
        manager.pm.set_blocked(name)
    manager.disabled = frozenset(disabled)


def _load_entry_points(manager: PluginManager, available: Mapping[str, Any], strict: bool) -> None:
    """Import and register each installed plugin not blocked, each in its own ``try``: one that
    fails to import is skipped with its name (fatal with ``plugins.strict``)."""
    for name, ep in sorted(available.items()):
        if manager.pm.is_blocked(name):
            continue  # blocked before import: its code never runs
        dist = ep.dist.name if ep.dist else None
        version = ep.dist.version if ep.dist else None
        try:
            manager.register(ep.load(), name, "entry point", dist, version)
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() on import ends nothing
            message = (
                f"called sys.exit({exc.code!r}) while being imported"
                if isinstance(exc, SystemExit)
                else f"{type(exc).__name__}: {exc}"
            )
            if strict:
                raise PluginLoadError(
                    f"plugin {name!r} ({dist}) failed to load: {message} (plugins.strict is true; "
                    f"fix or uninstall it, or add {name!r} to plugins.disabled)"
                ) from exc
            manager.load_failures.append(LoadFailure(name=name, distribution=dist, error=message))
            log.warning(
                "plugin %r (%s) failed to load and is skipped: %s; add it to plugins.disabled to silence this",
                name,
                dist,
                message,
            )


def _check_hook_names(manager: PluginManager) -> None:
    """Every hookimpl names a segtrack hook; a typo names the plugin (by its segtrack name) and
    the closest hook, instead of pluggy's object repr."""
    known = hook_names()
    for hook in sorted(vars(manager.pm.hook)):
        caller = getattr(manager.pm.hook, hook)
        if getattr(caller, "spec", True) is not None or not hasattr(caller, "get_hookimpls"):
            continue
        for impl in caller.get_hookimpls():
            if impl.opts.get("optionalhook"):
                continue
            hint = difflib.get_close_matches(hook, known, n=1)
            suggestion = f"did you mean {hint[0]!r}? " if hint else ""
            raise PluginLoadError(
                f"plugin {impl.plugin_name!r} implements {hook!r}, which is not a segtrack hook: {suggestion}"
                f"rename it (`segtrack plugins --hooks` lists every hook)"
            )


def _plugin_settings(settings: Any) -> Mapping[str, Any]:
    """The ``plugins`` section as far as building the manager needs it: values of the wrong type are
    left out here (the defaults apply) and reported when the settings are resolved."""
    raw = settings.get("plugins", {}) if settings is not None else {}
    section = {str(k).lower(): v for k, v in dict(raw or {}).items()} if isinstance(raw, Mapping) else {}
    wanted: dict[str, Any] = {
        "autoload": bool,
        "strict": bool,
        "disabled": (list, tuple),
        "fit_end_timeout": (int, float),
    }
    kept = {k: v for k, v in section.items() if k in wanted and isinstance(v, wanted[k])}
    if not all(isinstance(name, str) for name in kept.get("disabled", ())):
        del kept["disabled"]  # names only: anything else is reported by the settings check
    return kept


def _core_version() -> str:
    from segtrack import __version__

    return __version__


@functools.cache
def _hook_set() -> frozenset[str]:
    return frozenset(hook_names())


def hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "segtrack_spec"))
