"""Git commit, branch and dirty flag of the working directory, as run tags."""

from __future__ import annotations

import subprocess


def git_tags(cwd: str | None = None) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.source.git.commit": commit,
        "segtrack.git.branch": git("rev-parse", "--abbrev-ref", "HEAD") or "",
        "segtrack.git.dirty": "true" if status else "false",
    }
