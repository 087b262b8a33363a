"""MLflow's standard source tags, set the way its fluent API sets them: the user, the entry point
being run, and the git commit, branch and remote of the repository that holds it."""

from __future__ import annotations

import contextlib
import getpass
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("segtrack.mlflow")
_said_no_repo: set[str] = set()


def source_tags(entry_point: str | None = None) -> dict[str, str]:
    """``mlflow.user``, ``mlflow.source.name/type`` and, when the entry point lies in a git
    repository, ``mlflow.source.git.commit/branch/repoURL`` (plus ``segtrack.git.dirty``)."""
    source = Path(entry_point or sys.argv[0] or "segtrack").resolve()
    tags = {"mlflow.source.name": str(source), "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(KeyError, OSError):  # no user name in some containers
        tags["mlflow.user"] = getpass.getuser()
    folder = source if source.is_dir() else source.parent
    tags.update(_git_tags(folder))
    return tags


def _git_tags(folder: Path) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD") if folder.is_dir() else None
    if commit is None:
        if str(folder) not in _said_no_repo:
            _said_no_repo.add(str(folder))
            log.warning("mlflow: %s is not in a git repository: runs carry no git commit tags", folder)
        return {}
    tags = {"mlflow.source.git.commit": commit}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    remote = git("config", "--get", "remote.origin.url")
    if remote:
        tags["mlflow.source.git.repoURL"] = shown_remote(remote)
    status = git("status", "--porcelain", "--untracked-files=no")
    tags["segtrack.git.dirty"] = "true" if status else "false"
    return tags


def shown_remote(remote: str) -> str:
    """A git remote without its credentials. Over http(s) the whole ``user[:password]@`` is masked:
    a lone name there is often a token (``https://TOKEN@host/org/repo.git``)."""
    from urllib.parse import urlsplit, urlunsplit

    from segtrack import MASK
    from segtrack_mlflow.uri import redact

    parts = urlsplit(remote)
    if parts.scheme.lower() in ("http", "https") and "@" in parts.netloc:
        remote = urlunsplit(parts._replace(netloc=f"{MASK}@{parts.netloc.rpartition('@')[2]}"))
    return redact(remote)
