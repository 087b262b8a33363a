"""Settings from every layer (built-in defaults < configs/settings.toml < configs/.secrets.toml <
--config FILE < SEGTRACK_* environment variables < --set KEY=VALUE), checked once and handed down
as one read-only ``Settings``."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dynaconf import Dynaconf
from dynaconf.utils.parse_conf import parse_conf_data

from segtrack.config.core_schema import CORE_SCHEMA, CORE_SECTIONS, related_problems
from segtrack.config.schema import Setting, raise_problems, validate
from segtrack.config.secrets import SECRETS_FILE, mask_secrets, secret_keys
from segtrack.errors import ConfigError
from segtrack.plugins.records import freeze

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")
PROJECT_FILE = Path("configs") / "settings.toml"
ENVIRONMENTS = ("default", "development", "testing", "production")


def ignore_index(data: Mapping[str, Any]) -> int | None:
    """``data.ignore_index`` as the loop uses it: None for "none"."""
    value = data["ignore_index"]
    return None if value == "none" else value


def class_names(data: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(data["class_names"]) or tuple(str(k) for k in range(data["num_classes"]))


def load_settings(
    config_file: str | os.PathLike | None = None,
    env: str | None = None,
    overrides: Iterable[str] = (),
    project_dir: str | os.PathLike | None = None,
) -> Dynaconf:
    """Settings from every layer, the core sections checked (so a typo fails here, at once).

    ``overrides`` are ``"section.key=value"`` strings (values parsed as TOML, so ``3`` is an int,
    ``[1, 2]`` a list, ``abc`` a string). Raises ``ConfigError`` naming every problem found. The
    trainer checks them again together with the plugins' schemas (``resolve_settings``).
    """
    settings = read_settings(config_file, env, overrides, project_dir)
    config = resolved_dict(settings)
    secrets = secret_keys(project_dir)
    raise_problems(validate(config, CORE_SCHEMA, sorted(CORE_SECTIONS), secrets) + related_problems(config))
    return settings


def read_settings(
    config_file: str | os.PathLike | None = None,
    env: str | None = None,
    overrides: Iterable[str] = (),
    project_dir: str | os.PathLike | None = None,
) -> Dynaconf:
    """Every layer read into one Dynaconf object, nothing checked but the files' syntax."""
    base = Path(project_dir) if project_dir is not None else Path.cwd()
    files = [DEFAULTS_FILE]
    for optional in (base / PROJECT_FILE, base / SECRETS_FILE):
        if optional.is_file():
            files.append(optional)
    if config_file is not None:
        path = Path(config_file)
        if path.is_dir():
            raise ConfigError(
                f"config file {str(path)!r} is a folder: pass a TOML file to --config "
                f"(e.g. {str(path / 'settings.toml')!r})"
            )
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist: pass an existing TOML file to --config")
        files.append(path)
    for path in files:
        _check_toml(path)
    env = env or os.environ.get("SEGTRACK_ENV") or "development"
    if env not in ENVIRONMENTS:
        raise ConfigError(f"unknown environment {env!r}: use one of {', '.join(ENVIRONMENTS[1:])}")
    settings = Dynaconf(
        envvar_prefix="SEGTRACK",
        settings_files=[str(f) for f in files],
        environments=True,
        env=env,
        env_switcher="SEGTRACK_ENV",
        merge_enabled=True,
        load_dotenv=False,
    )
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"--set {item!r} is not SECTION.KEY=VALUE: write e.g. --set train.epochs=3")
        settings.set(key, parse_conf_data(raw.strip(), tomlfy=True))
    return settings


def _check_toml(path: Path) -> None:
    import tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): fix the syntax at that line") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}: check the path and its permissions") from None
    stray = [k for k in data if k not in ENVIRONMENTS and k.lower() != "dynaconf_merge"]
    if stray:
        raise ConfigError(
            f"{path}: top-level table(s) {', '.join(map(repr, stray))} are not an environment: "
            f"nest settings under [{'|'.join(ENVIRONMENTS)}], e.g. [default.train]"
        )


def resolved_dict(settings: Dynaconf) -> dict[str, Any]:
    """Plain nested dict of every section (lower-case names), without Dynaconf internals."""
    out = {}
    for key, value in settings.as_dict().items():
        if isinstance(value, Mapping):
            out[key.lower()] = plain(value, 1)
    return out


def plain(value: Any, depth: int = 0) -> Any:
    """Settings as plain dicts and lists; section and key names in lower case, names inside a
    key's table (``model.kwargs = {encoderName = ...}``) as given."""
    if isinstance(value, Mapping):
        return {(str(k).lower() if depth < 2 else str(k)): plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, depth + 1) for v in value]
    return value


class Settings(Mapping[str, Any]):
    """Resolved settings: every layer read, the core's and every plugin's schema checked in one pass,
    defaults filled in. Read-only: ``settings["train"]["lr"]`` or ``settings.train.lr``. The trainer
    takes them as they are; anything else it is given is resolved first."""

    def __init__(self, config: Mapping[str, Any]):
        object.__setattr__(self, "_data", freeze(config))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name.lower()]
        except KeyError:
            raise AttributeError(f"no settings section or key {name!r}") from None
        return Settings(value) if isinstance(value, Mapping) else value

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("resolved settings are read-only: change them in configs/, SEGTRACK_* or --set")

    def __repr__(self) -> str:
        return f"Settings({dict(self._data)!r})"


def resolve_settings(settings: Any, manager: Any) -> Settings:
    """Settings checked once, all together: the core schema, every plugin's ``settings_schema``,
    the keys that relate to each other, and which sections may exist (core sections and known
    plugins: registered, installed or disabled). Takes a Dynaconf object (``load_settings``), a
    plain nested mapping, or already resolved ``Settings`` (returned as they are). Raises one
    ``ConfigError`` listing every problem."""
    if isinstance(settings, Settings):
        return settings
    config = _over_defaults(plain(settings)) if isinstance(settings, Mapping) else resolved_dict(settings)
    declared = _plugin_schemas(manager)
    problems = _stray_sections(config, manager.known_names())
    sections = sorted(CORE_SECTIONS | {s.section for s in declared})
    problems += validate(config, [*CORE_SCHEMA, *declared], sections, secret_keys())
    problems += related_problems(config)
    raise_problems(problems)
    return Settings(config)


def _over_defaults(given: dict[str, Any]) -> dict[str, Any]:
    """A plain dict of settings laid over the built-in defaults: a dict may name only what it changes."""
    import tomllib

    with open(DEFAULTS_FILE, "rb") as fh:
        config = plain(tomllib.load(fh)["default"])
    for section, values in given.items():
        if isinstance(values, Mapping) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def _plugin_schemas(manager: Any) -> list[Setting]:
    """The settings plugins declare; a declaration that is not ``Setting`` objects in the plugin's
    own section is reported as that plugin's failure (its section is then checked by nothing)."""
    schema: list[Setting] = []
    for plugin, declared in manager.collect("settings_schema").items():
        wrong = [s for s in declared if not isinstance(s, Setting) or s.section != plugin]
        if wrong:
            manager.report_failure(
                plugin,
                "settings_schema",
                TypeError(f"declares {wrong[0]!r}: return segtrack.Setting objects keyed '{plugin}.<key>'"),
            )
            continue
        schema.extend(declared)
    return schema


def _stray_sections(config: Mapping[str, Any], plugin_names: Iterable[str]) -> list[str]:
    """A section that is neither a core section nor named after a known plugin (a typo, mostly)."""
    names = set(plugin_names)
    stray = [s for s in config if s not in CORE_SECTIONS and s not in names]
    if not stray:
        return []
    allowed = sorted(CORE_SECTIONS | names)
    parts = []
    for section in stray:
        hint = difflib.get_close_matches(section, allowed, n=1)
        parts.append(f"{section!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return [
        f"unknown settings section(s) {', '.join(parts)}: a section is a core section or the "
        f"name of an installed plugin ({', '.join(allowed)})"
    ]


def inference_config(config: Mapping[str, Any], project_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``model``, ``data`` and ``infer`` sections a checkpoint carries for ``segtrack predict``,
    every key configs/.secrets.toml defines masked, at any depth (other sections, plugins' included,
    stay out)."""
    return mask_secrets({section: config[section] for section in ("model", "data", "infer")}, secret_keys(project_dir))
