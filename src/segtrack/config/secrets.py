"""Secrets never shown: the keys configs/.secrets.toml defines, and passwords inside URIs or any
text that quotes them (``scheme://user:***@host``, ``?password=***``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SECRETS_FILE = Path("configs") / ".secrets.toml"
MASK = "***"
# the password of any scheme://user:password@ (up to the last @ before a space: a password may hold
# an unencoded / or @), and password=/token=/secret= query values
_USERINFO_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)[^\s]*@")
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|token|secret)=)[^&\s'\"]*", re.I)


def secret_keys(project_dir: str | os.PathLike | None = None) -> frozenset[str]:
    """Dotted keys defined in configs/.secrets.toml: never to be logged anywhere."""
    import tomllib

    path = (Path(project_dir) if project_dir else Path.cwd()) / SECRETS_FILE
    if not path.is_file():
        return frozenset()
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    keys = set()

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k.lower()}" if prefix else k.lower(), v)
        else:
            keys.add(prefix)

    for env_table in data.values():
        walk("", env_table)
    return frozenset(keys)


def mask_secrets(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """A plain copy of nested ``config`` whose values at the dotted ``keys`` (any depth, as
    ``secret_keys`` gives them; names compared in lower case) are ``MASK``."""
    wanted = {key.lower() for key in keys}

    def walk(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in node.items():
            dotted = f"{prefix}{str(name).lower()}"
            if dotted in wanted:
                out[name] = MASK
            elif isinstance(value, Mapping):
                out[name] = walk(value, dotted + ".")
            else:
                out[name] = value
        return out

    return walk(config, "")


def redact(text: str) -> str:
    """``text`` (a URI, or a message quoting URIs) with every password masked: ``http://user:***@host:port``."""
    return _QUERY_SECRET.sub(rf"\1{MASK}", _USERINFO_PASSWORD.sub(rf"\1{MASK}@", text))
