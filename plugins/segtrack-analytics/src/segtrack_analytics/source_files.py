"""Read MLflow's legacy file store (``file:./mlruns``) with os.scandir: one folder per run, one
file per param, tag and metric (keys with '/' are sub-folders)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa

from segtrack_analytics import build
from segtrack_analytics.errors import NoStore
from segtrack_analytics.source_rest import _table
from segtrack_analytics.tables import KEY_VALUE, METRIC, RUN_INDEX, RunDetails


def _meta(path: Path) -> dict[str, str]:
    """The flat ``key: value`` lines of an MLflow meta.yaml (nested entries are not needed)."""
    meta = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "-", "#")) and ":" in line:
            key, _, value = line.partition(":")
            meta[key.strip()] = value.strip().strip("'\"")
    return meta


def _walk(folder: Path, prefix: str = ""):
    """(key, path) of every file under ``folder``; nested folders make keys with '/'."""
    if not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        for entry in entries:
            key = f"{prefix}{entry.name}"
            if entry.is_dir():
                yield from _walk(Path(entry.path), key + "/")
            else:
                yield key, Path(entry.path)


class FileSource:
    def __init__(self, uri: str):
        parts = urlsplit(uri)
        self.root = Path(unquote(parts.path if parts.scheme == "file" else uri))
        if not self.root.is_dir():
            raise NoStore(f"no MLflow file store at {self.root}: pass the mlruns folder as --tracking-uri file:PATH")
        self._folders: dict[str, Path] = {}

    def run_index(self, experiments: Sequence[str] | None) -> pa.Table:
        rows, self._folders = [], {}
        for exp_dir in sorted(p for p in self.root.iterdir() if (p / "meta.yaml").is_file()):
            exp = _meta(exp_dir / "meta.yaml")
            if exp.get("lifecycle_stage", "active") != "active" or (experiments and exp.get("name") not in experiments):
                continue
            with os.scandir(exp_dir) as entries:
                for entry in entries:
                    meta_file = Path(entry.path) / "meta.yaml"
                    if not entry.is_dir() or not meta_file.is_file():
                        continue
                    run = _meta(meta_file)
                    if run.get("lifecycle_stage", "active") != "active":
                        continue
                    run_id = run.get("run_id") or entry.name
                    self._folders[run_id] = Path(entry.path)
                    rows.append(
                        {
                            "run_id": run_id,
                            "experiment_id": exp.get("experiment_id", exp_dir.name),
                            "experiment": exp.get("name"),
                            "run_name": run.get("run_name"),
                            "status": _status(run.get("status")),
                            "start_time": _int(run.get("start_time")),
                            "end_time": _int(run.get("end_time")),
                        }
                    )
        return pa.Table.from_pylist(rows, schema=RUN_INDEX)

    def details(self, run_ids: Sequence[str], histories: bool = True) -> RunDetails:
        """Histories are read whatever ``histories`` says (they come with the same reads)."""
        params, tags, latest, history = [], [], [], []
        for rid in run_ids:
            folder = self._folders[rid]
            params += [(rid, key, path.read_text()) for key, path in _walk(folder / "params")]
            tags += [(rid, key, path.read_text()) for key, path in _walk(folder / "tags")]
            for key, path in _walk(folder / "metrics"):
                points = []
                for line in path.read_text().splitlines():
                    fields = line.split()
                    if len(fields) >= 2:
                        value = float(fields[1])
                        points.append(
                            (rid, key, int(fields[2]) if len(fields) > 2 else 0, value, int(fields[0]), False)
                        )
                history += points
                if points:
                    latest.append(max(points, key=lambda p: (p[2], p[4])))
        return RunDetails(
            _table(params, KEY_VALUE), _table(tags, KEY_VALUE), _table(latest, METRIC), _table(history, METRIC)
        )

    def details_all(self, experiments: Sequence[str] | None, histories: bool = True) -> RunDetails:
        return self.details(list(self._folders))

    def histories_all(self, experiments: Sequence[str] | None) -> pa.Table:
        return build.history(self.details_all(experiments).metrics)

    def count_points(self, experiments: Sequence[str] | None) -> int:
        return self.histories_all(experiments).num_rows


STATUS_NAMES = {"1": "RUNNING", "2": "SCHEDULED", "3": "FINISHED", "4": "FAILED", "5": "KILLED"}


def _status(value: str | None) -> str | None:
    return STATUS_NAMES.get(value, value) if value is not None else None


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "", "null") else None
