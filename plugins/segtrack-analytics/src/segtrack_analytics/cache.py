"""Parquet cache of the raw tables, refreshed incrementally against the store.

A run is re-read when it is new, when its status, start or end time changed, or when it was
still running at the last sync; runs gone from the store are dropped. MLflow keeps no "last
updated" time per run, so a tag edited on a run that had already finished is only seen by a full
refresh. A cache that is unreadable, of another version or of another store is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segtrack_analytics.tables import KEY_VALUE, METRIC, RUN_INDEX, RunDetails, conform

VERSION = 1
ACTIVE = ("RUNNING", "SCHEDULED")
PARTS = {"params": KEY_VALUE, "tags": KEY_VALUE, "latest": METRIC, "metrics": METRIC}


class RunCache:
    def __init__(self, root: Path, uri: str, experiments: Sequence[str] | None):
        self.uri, self.experiments = uri, sorted(experiments) if experiments else None
        key = hashlib.sha256(json.dumps([uri, self.experiments]).encode()).hexdigest()[:16]
        self.folder = Path(root) / key

    def load(self) -> tuple[pa.Table, RunDetails] | None:
        """The cached tables, or None when there is no usable cache."""
        try:
            state = json.loads((self.folder / "state.json").read_text())
            if state.get("version") != VERSION or state.get("uri") != self.uri or state.get("experiments") != self.experiments:
                return None
            generation = self.folder / state["generation"]
            index = conform(pq.read_table(generation / "index.parquet"), RUN_INDEX)
            parts = {name: conform(pq.read_table(generation / f"{name}.parquet"), schema) for name, schema in PARTS.items()}
        except (OSError, ValueError, KeyError, pa.ArrowException):
            return None
        return index, RunDetails(**parts)

    def save(self, index: pa.Table, details: RunDetails) -> None:
        """Write a new generation, then switch state.json to it atomically; old ones are removed."""
        generation = f"gen-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        target = self.folder / generation
        target.mkdir(parents=True)
        pq.write_table(index, target / "index.parquet")
        for name in PARTS:
            pq.write_table(getattr(details, name), target / f"{name}.parquet")
        state = {"version": VERSION, "uri": self.uri, "experiments": self.experiments, "generation": generation,
                 "synced_at": time.time()}
        tmp = self.folder / f".state.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.folder / "state.json")
        for old in self.folder.glob("gen-*"):
            if old.name != generation:
                shutil.rmtree(old, ignore_errors=True)


def changed_runs(old: pa.Table, new: pa.Table) -> tuple[list[str], list[str]]:
    """(run ids to read again, run ids to drop) from two run indexes."""
    before = {r["run_id"]: r for r in old.select(["run_id", "status", "start_time", "end_time"]).to_pylist()}
    now = new.select(["run_id", "status", "start_time", "end_time"]).to_pylist()
    reread = [r["run_id"] for r in now
              if (b := before.get(r["run_id"])) is None or b != r or b["status"] in ACTIVE]
    present = {r["run_id"] for r in now}
    return reread, [rid for rid in before if rid not in present]


def merge(old: RunDetails, fresh: RunDetails, replaced: Sequence[str]) -> RunDetails:
    """``old`` without the rows of ``replaced`` runs, plus ``fresh``."""
    drop = pa.array(list(replaced), type=pa.string())
    merged = {}
    for name in PARTS:
        kept = getattr(old, name)
        if len(drop):
            kept = kept.filter(pc.invert(pc.is_in(kept.column("run_id"), value_set=drop)))
        merged[name] = pa.concat_tables([kept, getattr(fresh, name)])
    return RunDetails(**merged)
