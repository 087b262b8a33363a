"""Spool folders written by hand, as a fit would leave them (for `segtrack mlflow status|sync`)."""

from __future__ import annotations

import json
from pathlib import Path

LOCAL_ID = "20260101-000000-0badc0de"


def write_spool(root: Path, uri: str, records: list[bytes], run_name: str = "torn") -> Path:
    """A spool folder under ``root`` for ``uri`` holding ``records`` (lines, as bytes) and no run yet."""
    folder = root / LOCAL_ID
    (folder / "files").mkdir(parents=True)
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "tracking_uri": uri,
                "experiment": "segtrack",
                "run_name": run_name,
                "parent": None,
                "local_id": folder.name,
                "run_id": None,
            }
        )
    )
    (folder / "records.jsonl").write_bytes(b"".join(records))
    return folder


def run_records(steps: int, status: str | None = None, run_name: str = "torn") -> list[bytes]:
    """The run's creation, ``val_dice`` at steps 0..steps-1, then its final ``status`` if given."""
    create = {
        "t": "create",
        "experiment": "segtrack",
        "run_name": run_name,
        "tags": {},
        "parent": None,
        "ts": 1_700_000_000_000,
        "artifact_location": None,
    }
    metrics = [{"t": "metric", "k": "val_dice", "v": s / 10, "s": s, "ts": 1_700_000_000_000 + s} for s in range(steps)]
    end = [{"t": "status", "status": status, "ts": 1_700_000_100_000}] if status else []
    return [json.dumps(r).encode() + b"\n" for r in [create, *metrics, *end]]
