"""RunAnalytics: MLflow runs as two DuckDB tables, ``runs`` (one wide row per run) and
``metrics`` (full histories), with SQL, cross-fold summaries and top-N on top."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from segtrack import ConfigError
from segtrack_analytics import build
from segtrack_analytics.cache import RunCache, changed_runs, merge, unsettled_trials
from segtrack_analytics.columns import (
    CV_ID_COLUMN,
    FIT_ID_TAG,
    FOLD_COLUMN,
    MODEL_COLUMN,
    STUDY_ID_COLUMN,
    TRIAL_COLUMN,
    TRIAL_VALUE_COLUMN,
)
from segtrack_analytics.histories import PendingHistory, mentions_metrics
from segtrack_analytics.studies import STUDY_SUMMARY, study_summary_sql
from segtrack_analytics.tables import RunDetails, RunTables, Source
from segtrack_mlflow.uri import connect_uri, redact, resolve_tracking_uri, use_credentials

DEFAULT_CACHE_DIR = ".segtrack/analytics"


@dataclass(frozen=True)
class LoadStats:
    runs: int
    reread: int  # runs read from the store (all of them on a cold load)
    dropped: int  # runs that disappeared from the store since the cache was written
    from_cache: bool
    seconds: float
    count_points: Callable[[], int] = field(repr=False, compare=False)

    @cached_property
    def metric_points(self) -> int:
        """Points in the histories. Asked before they were read, it counts them in the store then
        (points of runs added since the load included)."""
        return self.count_points()


def make_source(uri: str) -> Source:
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme in ("sqlite", "postgresql"):
        from segtrack_analytics.source_sql import SqlSource

        return SqlSource(uri)
    if scheme in ("http", "https"):
        from segtrack_analytics.source_rest import RestSource

        return RestSource(uri)
    if scheme == "file":
        from segtrack_analytics.source_files import FileSource

        return FileSource(uri)
    raise ConfigError(f"segtrack-analytics cannot read {scheme}:// stores: use sqlite, postgresql, http(s) or file")


class RunAnalytics:
    """Load runs from any MLflow store into DuckDB and answer questions about them.

    :param tracking_uri: explicit URI; else ``MLFLOW_TRACKING_URI``, settings, ``sqlite:///mlflow.db``.
    :param settings: segtrack settings (for ``mlflow.tracking_uri`` and ``analytics.cache_dir``).
    :param cache_dir: Parquet cache folder; ``None`` reads the store every time.
    """

    def __init__(
        self, tracking_uri: str | None = None, settings: Any = None, cache_dir: str | Path | None = DEFAULT_CACHE_DIR
    ):
        uri = resolve_tracking_uri(tracking_uri, settings)
        self.tracking_uri = redact(uri)  # shown, and the cache's key: the password never leaves the process
        mlflow = (settings.get("mlflow") or {}) if settings is not None else {}
        use_credentials(mlflow.get("username", ""), mlflow.get("password", ""))  # as the mlflow plugin does
        self._uri = connect_uri(uri)  # a server's user:password@ goes to MLFLOW_TRACKING_USERNAME/PASSWORD
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._con: duckdb.DuckDBPyConnection = duckdb.connect(config={"enable_external_access": False})
        self._columns: list[str] = []
        self._cache: RunCache | None = None
        self._pending: PendingHistory | None = None  # histories not read yet

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection with both tables (``metrics`` is read now if it was not yet)."""
        self._read_history()
        return self._con

    # -- loading --------------------------------------------------------------------------------

    def load_experiment_runs(self, experiment: str | Sequence[str] | None = None, full: bool = False) -> LoadStats:
        """Fill ``runs`` and ``metrics`` with the runs of ``experiment`` (one name, several, or
        None for every active experiment). ``full`` ignores the cache. Returns once both tables
        are ready, but for an SQL store's histories: ``metrics`` reads them when first queried
        (summaries and top-N never need them). The cache is written in the background
        (``wait_for_cache``)."""
        started = time.perf_counter()
        experiments = [experiment] if isinstance(experiment, str) else (list(experiment) if experiment else None)
        source = make_source(self._uri)
        index = source.run_index(experiments)
        cache = RunCache(self.cache_dir, self.tracking_uri, experiments) if self.cache_dir else None
        self._cache = cache
        cached = cache.load() if cache and not full else None
        added = None
        if cached is None:
            tables = self._tables(index, source.details_all(experiments, histories=False))
            reread, dropped = index.num_rows, 0
        else:
            reread_ids, dropped_ids = changed_runs(cached.index, index)
            reread_ids += unsettled_trials(cached.runs, reread_ids, dropped_ids)
            fresh_index = index.filter(pc.is_in(index["run_id"], value_set=pa.array(reread_ids, pa.string())))
            histories = cached.history is not None  # else all are read when first queried
            details = source.details(reread_ids, histories) if reread_ids else RunDetails.empty()
            fresh = self._tables(fresh_index, details)
            replaced = _cached(cached.index, reread_ids + dropped_ids)
            tables = merge(cached, fresh, replaced, index)
            reread, dropped = len(reread_ids), len(dropped_ids)
            if not replaced:
                added = fresh  # only new runs: the cache grows by a delta file
        if cache and (cached is None or reread or dropped):
            cache.save_in_background(tables, added)
        pending, rows = None, 0
        if tables.history is None:
            pending = PendingHistory(source, experiments, index)
        else:
            rows = tables.history.num_rows
        self._build(tables, pending)
        points = pending.count if pending is not None else lambda: rows
        return LoadStats(index.num_rows, reread, dropped, cached is not None, time.perf_counter() - started, points)

    def wait_for_cache(self) -> None:
        """Return once the cache write of the last load has ended (Python also waits at exit)."""
        if self._cache is not None:
            self._cache.wait()

    def _tables(self, index: pa.Table, details: RunDetails) -> RunTables:
        """The tables of the runs of ``index``. A run created after the index was read can have
        details too (SQL stores): its histories wait for the next load, as its row does. Histories
        the source left out are None."""
        wide = build.wide(self._con, details)
        history = None
        if details.metrics is not None:
            history, ids = build.history(details.metrics), index["run_id"].combine_chunks()
            if not pc.all(pc.is_in(wide["run_id"], value_set=ids)).as_py():
                history = history.filter(pc.is_in(history["run_id"], value_set=ids))
        return RunTables(index, build.runs(self._con, index, wide), history)

    def experiment_run_counts(self) -> dict[str, int]:
        """Runs per active experiment of the store, most runs first (experiments without runs left out)."""
        index = make_source(self._uri).run_index(None)
        counts = index.group_by("experiment").aggregate([("run_id", "count")]).to_pylist()
        return {c["experiment"]: c["run_id_count"] for c in sorted(counts, key=lambda c: -c["run_id_count"])}

    def _build(self, tables: RunTables, pending: PendingHistory | None) -> None:
        """``runs`` and ``metrics`` are the Arrow tables themselves, which DuckDB scans in place: a
        copy into DuckDB took as long as reading the store (metrics) or a refresh (runs at 100k).
        ``metrics`` waits for its first query when the histories are ``pending``."""
        self._con.register("runs", tables.runs)
        if tables.history is not None:
            self._con.register("metrics", tables.history)
        else:
            self._con.unregister("metrics")  # a previous load's, if any
        self._pending = pending
        self._columns = list(tables.runs.column_names)

    def _read_history(self) -> None:
        """Read the pending histories and add them to the cache (in the background)."""
        if self._pending is None:
            return
        history = self._pending.read()
        self._con.register("metrics", history)
        self._pending = None
        if self._cache is not None:
            self._cache.save_history_in_background(history)

    def _one_row(self, sql: str, parameters: list[Any] | None = None) -> tuple[Any, ...]:
        """The row of an aggregate query without GROUP BY (DuckDB always returns exactly one)."""
        row = self._con.execute(sql, parameters).fetchone()
        if row is None:
            raise RuntimeError(f"DuckDB returned no row for an aggregate query: {sql}")
        return row

    # -- questions ------------------------------------------------------------------------------

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    def query(self, sql: str) -> pa.Table:
        """Run the user's SQL over ``runs`` and ``metrics``. The connection cannot touch files
        (external access is off), so no query can write to the MLflow store or anywhere else."""
        if mentions_metrics(sql):
            self._read_history()
        try:
            relation = self._con.sql(sql)
        except duckdb.Error as exc:
            raise ConfigError(
                f"{str(exc).strip()}\n  runs columns: {', '.join(self._columns)}\n"
                f"  metrics columns: run_id, key, step, value, timestamp\n"
                f'  (quote dotted names: "params.model.width")'
            ) from None
        return relation.to_arrow_table() if relation is not None else pa.table({})

    def require_column(self, column: str) -> str:
        if column not in self._columns:
            hint = difflib.get_close_matches(column, self._columns, n=3)
            raise ConfigError(
                f"no column {column!r} in runs"
                + (f" (did you mean {', '.join(hint)}?)" if hint else "")
                + f": available: {', '.join(self._columns)}"
            )
        return f'"{column}"'

    def metric_column(self, metric: str) -> str:
        return self.require_column(metric if metric.startswith("metrics.") else f"metrics.{metric}")

    def cross_fold_summary(
        self, metric: str, by: Sequence[str] | None = None, mode: str = "max", cv_id: str | None = None
    ) -> pa.Table:
        """Per configuration: folds, mean, std, min, max of ``metric``, best mean first (highest
        for ``mode="max"``, lowest for ``"min"``, e.g. a loss).

        Without ``by``: the fold runs of each cross-validation parent (a study's trials are not
        folds: ``study_summary`` summarises studies); ``cv_id``: only the cross-validation whose
        parent carries that ``segtrack.cv_id``. With ``by``: every run with the metric, grouped by
        those columns (e.g. ``params.model.width``) and always by the model
        (``tags.segtrack.model``): different networks are never one group."""
        if mode not in ("max", "min"):
            raise ConfigError(f'mode {mode!r} is invalid: use "max" or "min"')
        order = "DESC" if mode == "max" else "ASC"
        value = self.metric_column(metric)
        stats = (
            f"count(*) AS folds, avg({value}) AS mean, stddev_samp({value}) AS std, "
            f"min({value}) AS min, max({value}) AS max"
        )
        if by and cv_id is not None:
            raise ConfigError("cross_fold_summary: give by (columns to group runs by) or cv_id (one CV), not both")
        parameters: list[Any] = []
        if by:
            columns = [self.require_column(c) for c in by]
            if MODEL_COLUMN in self._columns and f'"{MODEL_COLUMN}"' not in columns:
                columns.append(f'"{MODEL_COLUMN}"')
            keys = ", ".join(columns)
            sql = f"SELECT {keys}, {stats} FROM runs WHERE {value} IS NOT NULL GROUP BY {keys} ORDER BY mean {order}"
        else:
            # folds grouped first, then their parents' names joined (the join on 100k runs cost ~2x); a
            # fold run carries segtrack.fold (a study's trial runs, also children, do not)
            folds = f'"{FOLD_COLUMN}" IS NOT NULL' if FOLD_COLUMN in self._columns else "false"
            if cv_id is not None:  # the parent of this CV's folds carries its id
                if CV_ID_COLUMN in self._columns:
                    folds += f' AND parent_run_id IN (SELECT run_id FROM runs WHERE "{CV_ID_COLUMN}" = ?)'
                    parameters.append(cv_id)
                else:
                    folds = "false"
            sql = (
                f"SELECT coalesce(parent.run_name, g.parent_run_id) AS cv_run, g.* FROM (SELECT parent_run_id, "
                f"{stats} FROM runs WHERE parent_run_id IS NOT NULL AND {folds} AND {value} IS NOT NULL "
                f"GROUP BY parent_run_id) g LEFT JOIN runs parent ON parent.run_id = g.parent_run_id "
                f"ORDER BY mean {order}"
            )
        return self._con.sql(sql, params=parameters or None).to_arrow_table()

    def study_summary(self) -> pa.Table:
        """Per study (``segtrack sweep``): its trial runs counted by state and its best completed
        trial, never averaged as folds (see ``studies.study_summary_sql``)."""
        sql = study_summary_sql(self._columns)
        table = self._con.sql(sql).to_arrow_table() if sql else None
        return table.cast(STUDY_SUMMARY) if table is not None else STUDY_SUMMARY.empty_table()

    def top_models(self, metric: str, n: int = 5, mode: str = "max") -> pa.Table:
        """The ``n`` best runs by ``metric`` (NaN never ranks)."""
        if mode not in ("max", "min"):
            raise ConfigError(f'mode {mode!r} is invalid: use "max" or "min"')
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"n = {n!r} is invalid: ask for at least 1 run")
        value = self.metric_column(metric)
        order = "DESC" if mode == "max" else "ASC"
        return self._con.sql(
            f"SELECT run_id, run_name, experiment, status, parent_run_id, {value} AS {value} FROM runs "
            f"WHERE {value} IS NOT NULL AND NOT isnan({value}) ORDER BY {value} {order}, start_time LIMIT {n}"
        ).to_arrow_table()

    def rank_of(self, metric: str, value: float, mode: str = "max", fit_id: str | None = None) -> tuple[int, int]:
        """(rank of ``value``, number of ranked runs) among the loaded runs; with ``fit_id`` (the
        ranked fit's ``segtrack.fit_id`` tag), ``value`` is that fit's own and counts once whether
        or not its run has reached the store yet."""
        column = self.metric_column(metric)
        better = ">" if mode == "max" else "<"
        where = f"{column} IS NOT NULL AND NOT isnan({column})"
        parameters: list[Any] = [value]
        if fit_id is not None and FIT_ID_TAG in self._columns:
            where += f' AND "{FIT_ID_TAG}" IS DISTINCT FROM ?'
            parameters.append(fit_id)
        total, ahead = self._one_row(
            f"SELECT count(*), count(*) FILTER (WHERE {column} {better} ?) FROM runs WHERE {where}", parameters
        )
        return ahead + 1, total + (fit_id is not None)

    def rank_in_study(self, study_id: str, trial: int, value: float, mode: str = "max") -> tuple[int, int]:
        """(rank of ``value``, number of ranked trials) among the trials of the study ``study_id``
        that have a value (``trial_value``), ranked as `segtrack runs sweep` ranks them (an equal
        value ranks ahead when its trial number is lower); ``value`` is trial number ``trial``'s own
        and counts once whether or not its run holds it yet."""
        if not {STUDY_ID_COLUMN, TRIAL_COLUMN, TRIAL_VALUE_COLUMN} <= set(self._columns):
            return 1, 1  # no trial's value is stored yet
        better = ">" if mode == "max" else "<"
        column, number = f'"{TRIAL_VALUE_COLUMN}"', f'TRY_CAST("{TRIAL_COLUMN}" AS BIGINT)'
        total, ahead = self._one_row(
            f"SELECT count(*), count(*) FILTER (WHERE {column} {better} ? OR ({column} = ? AND {number} < ?)) "
            f'FROM runs WHERE "{STUDY_ID_COLUMN}" = ? AND "{TRIAL_COLUMN}" <> ? '
            f"AND {column} IS NOT NULL AND NOT isnan({column})",
            [value, value, trial, study_id, str(trial)],
        )
        return ahead + 1, total + 1


def _cached(index: pa.Table, run_ids: list[str]) -> list[str]:
    """Those of ``run_ids`` that the cached ``index`` holds (the cache holds rows of no other run)."""
    ids = pa.array(run_ids, pa.string())
    return ids.filter(pc.is_in(ids, value_set=index["run_id"].combine_chunks())).to_pylist() if run_ids else []
