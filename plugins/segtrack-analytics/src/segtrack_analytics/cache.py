"""Cache of the built tables (Arrow IPC files), refreshed incrementally against the store.

A run is re-read when it is new, when its status, start or end time, its name or its
experiment's name changed, or when it was still running at the last sync; runs gone from the
store are dropped. MLflow keeps no "last
updated" time per run, so a tag edited on a run that had already finished is only seen by a full
refresh. A cache that is unreadable, of another version or of another store is rebuilt.

The files are uncompressed Arrow IPC, memory-mapped when read: a warm load of 100,000 runs maps
them instead of decoding them (Parquet took seconds). Run ids and keys in the histories are
dictionary-encoded (a quarter of the size). Files are written under a temporary name and renamed,
so a file another process has mapped is never changed under it.

The cache is written by a background thread, so a load answers without waiting for the files. The
next load of the same cache in this process waits for that write first, and Python waits for it
at exit (the thread is not a daemon). A process killed mid-write leaves the previous cache intact:
``state.json`` is replaced last.

Histories are read from the store when first queried (not at a load: ``runs`` answers summaries
and top-N alone), so a generation may lack them until then (``state["metrics"]`` is None); they
are added to it once read (``save_history``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from segtrack_analytics import build
from segtrack_analytics.columns import FOLD_COLUMN, ROLE_COLUMN, TRIAL_COLUMN, TRIAL_STATE_COLUMN
from segtrack_analytics.tables import RUN_INDEX, RunTables, conform

log = logging.getLogger("segtrack.analytics")
VERSION = 4  # 4: histories optional (3: the built tables as Arrow IPC; 2: the raw tables as Parquet)
MAX_DELTAS = 8  # delta files before the next refresh rewrites the cache whole
ACTIVE = ("RUNNING", "SCHEDULED")
# The one write in flight per cache folder, whichever RunAnalytics started it: a second write, or
# a load, of the same folder waits for it. Entries leave when their write ends.
_writing: dict[str, threading.Thread] = {}
_writing_lock = threading.Lock()


class RunCache:
    def __init__(self, root: Path, uri: str, experiments: Sequence[str] | None):
        self.uri, self.experiments = uri, sorted(experiments) if experiments else None
        key = hashlib.sha256(json.dumps([uri, self.experiments]).encode()).hexdigest()[:16]
        self.folder = Path(root) / key
        self._key = os.path.abspath(self.folder)  # the registry's key: the same folder by any path
        self.current: tuple[str, str] | None = None  # (generation, index file) this process last read or wrote

    def _state(self) -> dict | None:
        try:
            state = json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError):
            return None
        if (
            state.get("version") != VERSION
            or state.get("uri") != self.uri
            or state.get("experiments") != self.experiments
        ):
            return None
        return state

    def load(self) -> RunTables | None:
        """The cached tables, or None when there is no usable cache."""
        self.wait()
        state = self._state()
        if state is None:
            return None
        try:
            generation = self.folder / state["generation"]
            runs_files = ["runs.arrow"] + [f"runs-delta{i}.arrow" for i in range(state["deltas"])]
            index = conform(_read(generation / state["index"]), RUN_INDEX)
            # runs files differ in columns when later runs brought new keys: nulls fill the gaps
            runs = build.arrange(
                pa.concat_tables([_read(generation / f) for f in runs_files], promote_options="permissive")
            )
            metrics = state["metrics"]
            history = None if metrics is None else pa.concat_tables([_read(generation / f) for f in metrics])
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            return None
        self.current = (state["generation"], state["index"])
        return RunTables(index, runs, history)

    def wait(self) -> None:
        """Return once no write of this cache is in flight in this process."""
        with _writing_lock:
            thread = _writing.get(self._key)
        if thread is not None:
            thread.join()

    def save_in_background(self, tables: RunTables, added: RunTables | None = None) -> None:
        """``save`` in a thread of its own; a folder that cannot be written costs a warning."""
        self._in_background(self.save, tables, added)

    def save_history_in_background(self, history: pa.Table) -> None:
        """``save_history`` in a thread of its own, once the write in flight has ended."""
        self.wait()  # the load's own write: it sets ``current``
        self._in_background(self.save_history, history, self.current)

    def _in_background(self, write, *args) -> None:
        self.wait()
        thread = threading.Thread(target=self._write_or_warn, args=(write, *args), name="segtrack-analytics-cache")
        with _writing_lock:
            _writing[self._key] = thread
        thread.start()

    def _write_or_warn(self, write, *args) -> None:
        try:
            write(*args)
        except OSError as exc:  # the cache only saves time
            log.warning(
                "analytics: cannot write the cache in %s (%s): set analytics.cache_dir to a writable folder",
                self.folder.parent,
                exc.strerror or exc,
            )
        finally:
            with _writing_lock:
                if _writing.get(self._key) is threading.current_thread():
                    del _writing[self._key]

    def save(self, tables: RunTables, added: RunTables | None = None) -> None:
        """Persist the tables. ``added``: when the change since the cached state only adds runs,
        only their rows are written (a delta file); otherwise a new generation is written whole."""
        state = self._state()
        if added is not None and state is not None and state["deltas"] < MAX_DELTAS:
            generation = self.folder / state["generation"]
            delta = state["deltas"]
            _write(added.runs, generation / f"runs-delta{delta}.arrow")
            metrics = None
            if state["metrics"] is not None and added.history is not None and tables.history is not None:
                metrics = [*state["metrics"], f"metrics-delta{delta}.arrow"]
                _write(_encoded(added.history), generation / metrics[-1])
            index_file = f"index-{delta + 1}.arrow"
            _write(tables.index, generation / index_file)
            changes = {"deltas": delta + 1, "index": index_file, "metrics": metrics, "synced_at": time.time()}
            self._switch({**state, **changes})
            (generation / state["index"]).unlink(missing_ok=True)
            return
        name = f"gen-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
        target = self.folder / name
        target.mkdir(parents=True)
        _write(tables.index, target / "index.arrow")
        _write(tables.runs, target / "runs.arrow")
        if tables.history is not None:
            _write(_encoded(tables.history), target / "metrics.arrow")
        self._switch(
            {
                "version": VERSION,
                "uri": self.uri,
                "experiments": self.experiments,
                "generation": name,
                "index": "index.arrow",
                "deltas": 0,
                "metrics": None if tables.history is None else ["metrics.arrow"],
                "synced_at": time.time(),
            }
        )
        for old in self.folder.glob("gen-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def save_history(self, history: pa.Table, token: tuple[str, str] | None) -> None:
        """Add histories read after the load to the generation of its runs (``token``: ``current``
        once the load's own write ended), unless the cache has changed since or has them already."""
        state = self._state()
        if state is None or token != (state["generation"], state["index"]) or state["metrics"] is not None:
            return
        name = f"metrics-{uuid.uuid4().hex[:6]}.arrow"
        _write(_encoded(history), self.folder / state["generation"] / name)
        self._switch({**state, "metrics": [name]})

    def _switch(self, state: dict) -> None:
        """state.json names the files that make up the cache; replacing it is the commit."""
        tmp = self.folder / f".state.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.folder / "state.json")
        self.current = (state["generation"], state["index"])


def changed_runs(old: pa.Table, new: pa.Table) -> tuple[list[str], list[str]]:
    """(run ids to read again, run ids to drop) from two run indexes, by a hash join. A renamed
    run or experiment is read again too: its cached row shows the name."""
    keys = ["run_id", "status", "start_time", "end_time", "run_name", "experiment"]
    joined = new.select(keys).join(old.select(keys), "run_id", join_type="left outer", right_suffix=".old")
    reread = pc.is_null(joined["status.old"])
    reread = pc.or_(reread, pc.is_in(joined["status.old"], value_set=pa.array(ACTIVE)))
    for key in keys[1:]:
        reread = pc.or_(reread, _differ(joined[key], joined[f"{key}.old"]))
    dropped = pc.invert(pc.is_in(old["run_id"], value_set=new["run_id"].combine_chunks()))
    return joined["run_id"].filter(reread).to_pylist(), old["run_id"].filter(dropped).to_pylist()


def unsettled_trials(runs: pa.Table, reread: Sequence[str], dropped: Sequence[str]) -> list[str]:
    """Cached trial runs of a study without their verdict (``segtrack.trial_state``), besides
    ``reread`` and ``dropped``: the tracker tags a trial's run when the trial ends, which can be
    after the run finished (a CV trial's parent finishes with its folds), so a finished run's
    cached row may miss its state and value. Read again until it has them."""
    if TRIAL_COLUMN not in runs.column_names:
        return []
    unsettled = pc.is_valid(runs[TRIAL_COLUMN])
    for column in (TRIAL_STATE_COLUMN, FOLD_COLUMN):  # a CV trial's folds get no verdict of their own
        if column in runs.column_names:
            unsettled = pc.and_(unsettled, pc.is_null(runs[column]))
    if ROLE_COLUMN in runs.column_names:
        unsettled = pc.and_(unsettled, pc.fill_null(pc.not_equal(runs[ROLE_COLUMN], "study-parent"), True))
    known = set(reread) | set(dropped)
    return [r for r in runs["run_id"].filter(unsettled).to_pylist() if r not in known]


def _differ(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """a != b, where null equals null (a run still running has no end time)."""
    return pc.fill_null(pc.not_equal(a, b), pc.xor(pc.is_null(a), pc.is_null(b)))


def merge(old: RunTables, fresh: RunTables, replaced: Sequence[str], index: pa.Table) -> RunTables:
    """``old`` without the rows of ``replaced`` runs, plus ``fresh``, with the run ``index`` now.
    Filtering scans every cached row, so it only happens when a replaced run is in the cache.
    Without cached histories the merged tables have none either (read when first queried)."""
    runs, history = old.runs, old.history
    if replaced:
        drop = pa.array(replaced, pa.string())
        runs = build.rows_of(runs, drop, keep=False)
        history = build.rows_of(history, drop, keep=False) if history is not None else None
        # a column that only replaced runs had is absent from a full read too
        runs = runs.select([c for c in runs.column_names if c in build.RUN_COLUMNS or runs[c].null_count < len(runs)])
    if history is not None and fresh.history is not None:
        history = pa.concat_tables([history, fresh.history.cast(history.schema)])
    else:
        history = None
    return RunTables(index, build.arrange(pa.concat_tables([runs, fresh.runs], promote_options="permissive")), history)


def _read(path: Path) -> pa.Table:
    """The table of an IPC file, memory-mapped: its buffers are the file's pages."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def _write(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _encoded(history: pa.Table) -> pa.Table:
    """Run ids and keys as dictionaries, one per column (an IPC file holds one per column)."""
    return build.unified(build.encoded(history))
