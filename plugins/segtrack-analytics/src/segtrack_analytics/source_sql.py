"""Read an MLflow SQL backend directly and read-only: SQLite (ADBC, or sqlite3) and PostgreSQL.

Both use MLflow's own schema, so one set of queries serves both. Never one call per run.
"""

from __future__ import annotations

import io
import itertools
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pyarrow as pa

from segtrack import ConfigError, redact
from segtrack_analytics import build
from segtrack_analytics.errors import NoStore, StoreError, StoreUnreachable
from segtrack_analytics.tables import KEY_VALUE, METRIC, RUN_INDEX, RunDetails, conform

CHUNK = 500  # run ids per IN (...) list
# Reads run side by side, each on its own connection (the drivers release the GIL while they
# fetch); SQLite's metrics table, by far the largest, is read in rowid slices, one per core.
READERS = max(1, min(4, os.cpu_count() or 1))
HISTORY_SLICE = 1_000_000  # metric rows per slice of a histories read: its raw rows take ~70 MB

RUN_INDEX_SQL = """
SELECT r.run_uuid AS run_id, CAST(r.experiment_id AS TEXT) AS experiment_id, e.name AS experiment,
       r.name AS run_name, r.status AS status, r.start_time AS start_time, r.end_time AS end_time
FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active' {experiment_filter}
"""
DETAIL_SQL = {
    "params": "SELECT run_uuid AS run_id, key, value FROM params WHERE {runs}",
    "tags": "SELECT run_uuid AS run_id, key, value FROM tags WHERE {runs}",
    "latest": "SELECT run_uuid AS run_id, key, step, value, timestamp, is_nan FROM latest_metrics WHERE {runs}",
    "metrics": "SELECT run_uuid AS run_id, key, step, value, timestamp, is_nan FROM metrics WHERE {runs}",
}
SCHEMAS = {"params": KEY_VALUE, "tags": KEY_VALUE, "latest": METRIC, "metrics": METRIC}
MLFLOW_TABLES = ("experiments", "runs", "params", "tags", "metrics", "latest_metrics")
TABLES_SQL = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'table'",
    "postgresql": "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()",
}
BATCH_ROWS = "adbc.sqlite.query.batch_rows"
PG_CONNECT_TIMEOUT = 10  # seconds; libpq waits forever by default


def _quote(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


class SqlSource:
    """One read-only connection per call; the store is never written."""

    def __init__(self, uri: str):
        self.uri = uri
        self.kind = "sqlite" if uri.startswith("sqlite:") else "postgresql"
        if self.kind == "sqlite":
            self.path = Path(uri[len("sqlite:///") :])
            if not self.path.is_file():
                raise NoStore(f"no MLflow store at {self.path}: train first (make train), or pass --tracking-uri")
        self._indexed: dict[str, int] = {}  # scope: runs in it when run_index read them

    def _fetch(self, sql: str) -> pa.Table:
        if self.kind == "sqlite":
            return _sqlite_arrow(self.path, sql)
        return _postgres_arrow(self.uri, sql)

    def _require_mlflow_tables(self) -> None:
        missing = set(MLFLOW_TABLES) - set(self._fetch(TABLES_SQL[self.kind]).column("name").to_pylist())
        if missing:
            store = self.path if self.kind == "sqlite" else redact(self.uri)
            lacks = (
                "none of MLflow's tables"
                if len(missing) == len(MLFLOW_TABLES)
                else f"no table {', '.join(sorted(missing))}"
            )
            raise StoreError(
                f"{store} is a database but not an MLflow store (it has {lacks}): pass the database "
                f"MLflow tracks runs in as --tracking-uri"
            )

    def run_index(self, experiments: Sequence[str] | None) -> pa.Table:
        self._require_mlflow_tables()
        where = f"AND e.name IN ({_quote(experiments)})" if experiments else ""
        index = conform(self._fetch(RUN_INDEX_SQL.format(experiment_filter=where)), RUN_INDEX)
        self._indexed[_scope(experiments)] = index.num_rows
        return index

    def details(self, run_ids: Sequence[str], histories: bool = True) -> RunDetails:
        queries = []
        for start in range(0, len(run_ids), CHUNK):
            chunk = f"run_uuid IN ({_quote(run_ids[start : start + CHUNK])})"
            queries += [(name, sql.format(runs=chunk)) for name, sql in _parts(histories)]
        return self._details(queries, histories)

    def details_all(self, experiments: Sequence[str] | None, histories: bool = True) -> RunDetails:
        """Every run of ``experiments`` (the cold-load path): the metrics in slices, the rest in one
        query per table."""
        slices, rest = self._scan_plan(_scope(experiments))
        queries = [("metrics", DETAIL_SQL["metrics"].format(runs=where)) for where in slices] if histories else []
        queries += [(n, sql.format(runs=rest)) for n, sql in _parts(False)]
        return self._details(queries, histories)

    def histories_all(self, experiments: Sequence[str] | None) -> pa.Table:
        """The ``metrics`` table of every run of ``experiments``, built slice by slice as the store
        is read (the raw rows of 1,000,000 runs would take ~6 GB): run ids and keys as dictionaries."""
        slices, _ = self._scan_plan(_scope(experiments), HISTORY_SLICE)
        queries = [DETAIL_SQL["metrics"].format(runs=where) for where in slices]
        with ThreadPoolExecutor(max_workers=min(READERS, len(queries))) as pool:
            return pa.concat_tables(list(pool.map(lambda sql: _history(self._fetch(sql)), queries)))

    def count_points(self, experiments: Sequence[str] | None) -> int:
        """Metric points of every run of ``experiments`` (a count, the histories unread)."""
        _, rest = self._scan_plan(_scope(experiments))
        return self._fetch(f"SELECT count(*) AS n FROM metrics WHERE {rest}").column("n")[0].as_py()

    def _scan_plan(self, scope: str, rows: int | None = None) -> tuple[list[str], str]:
        """WHERE conditions: a list for the metrics table, one for each other table. SQLite's
        metrics are read in READERS rowid ranges side by side (ranges of at most ``rows`` rows,
        when given: READERS of them in flight at a time). When every run of the store is in
        scope, all tables are plain scans (the scope costs an index search per run, ~2x the time
        for small tables): rows of runs created since the index was read are left out later (the
        metrics by the rowid ranges, the rest by the join with the index, see RunAnalytics). The
        runs in scope are counted by the index when it was read (a count takes 2 s at 1M runs)."""
        if self.kind != "sqlite":
            return [scope], scope
        scoped = self._indexed.get(scope, f"(SELECT count(*) FROM runs WHERE {scope})")
        snapshot = self._fetch(
            f"SELECT (SELECT max(rowid) FROM metrics) AS last, (SELECT count(*) FROM runs) AS runs, {scoped} AS scoped"
        ).to_pylist()[0]
        everything = snapshot["runs"] == snapshot["scoped"]
        last = snapshot["last"] or 0
        count = max(READERS, -(-last // rows)) if rows else READERS
        bounds = [last * i // count for i in range(count + 1)]
        slices = [f"rowid > {low} AND rowid <= {high}" for low, high in itertools.pairwise(bounds)]
        return (slices, "TRUE") if everything else ([f"{where} AND {scope}" for where in slices], scope)

    def _details(self, queries: list[tuple[str, str]], histories: bool = True) -> RunDetails:
        """Run (part, sql) queries side by side; each part's tables in the order of its queries.
        Without ``histories`` the metrics part is None (not read)."""
        with ThreadPoolExecutor(max_workers=min(READERS, len(queries) or 1)) as pool:
            tables = list(pool.map(lambda query: self._fetch(query[1]), queries))
        parts: dict[str, list[pa.Table]] = {name: [] for name in DETAIL_SQL}
        for (name, _), table in zip(queries, tables):
            parts[name].append(conform(_bools(table), SCHEMAS[name]))
        details = {n: pa.concat_tables(p) if p else SCHEMAS[n].empty_table() for n, p in parts.items()}
        return RunDetails(**{**details, "metrics": details["metrics"] if histories else None})


def _history(raw: pa.Table) -> pa.Table:
    """The ``metrics`` rows of one slice of the store. Every column is a new array: one column of
    an imported batch keeps the whole batch alive (at 100k runs, 0.5 GB of run ids)."""
    import pyarrow.compute as pc

    history = build.encoded(build.history(conform(_bools(raw), METRIC)))
    return history.set_column(2, "step", pc.add(history["step"], 0))  # the one column not computed anew


def _scope(experiments: Sequence[str] | None) -> str:
    """The WHERE condition of the rows of every active run of ``experiments``."""
    return (
        "run_uuid IN (SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = "
        "r.experiment_id WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active'"
        + (f" AND e.name IN ({_quote(experiments)}))" if experiments else ")")
    )


def _parts(histories: bool) -> list[tuple[str, str]]:
    return [(n, sql) for n, sql in DETAIL_SQL.items() if histories or n != "metrics"]


def _bools(table: pa.Table) -> pa.Table:
    if "is_nan" in table.column_names and table.schema.field("is_nan").type != pa.bool_():
        import pyarrow.compute as pc

        index = table.column_names.index("is_nan")
        table = table.set_column(index, "is_nan", pc.not_equal(table.column("is_nan"), 0))
    return table


def _sqlite_arrow(path: Path, sql: str) -> pa.Table:
    """Read-only; the path is percent-encoded, else a '?' or '#' in it would end the file name
    and SQLite would create another file."""
    uri = path.resolve().as_uri() + "?mode=ro"
    adbc = _adbc_sqlite()
    errors: tuple[type[Exception], ...] = (sqlite3.Error, adbc.Error) if adbc else (sqlite3.Error,)
    try:
        return _adbc_arrow(adbc, uri, sql) if adbc else _sqlite3_arrow(uri, sql)
    except errors as exc:
        raise _sqlite_error(path, exc) from None


def _sqlite_error(path: Path, exc: Exception) -> StoreError:
    cause = _first_line(exc).rpartition("[SQLite] ")[2].removeprefix("Failed to prepare query: ")  # ADBC's prefix
    if "not a database" in cause:
        return StoreError(f"{path} is not an SQLite database: pass an MLflow store as --tracking-uri sqlite:///PATH")
    return StoreError(f"cannot read the SQLite store {path} ({cause}): check the file, or pass another --tracking-uri")


def _adbc_sqlite() -> ModuleType | None:
    """ADBC's driver manager when the SQLite driver is installed, else None: sqlite3 reads the
    store then. Not ADBC's DB-API module: it imports pandas (0.3-0.4 s at the first load)."""
    try:
        import adbc_driver_manager
        import adbc_driver_sqlite  # noqa: F401
    except ImportError:
        return None
    return adbc_driver_manager


def _adbc_arrow(adbc: ModuleType, uri: str, sql: str) -> pa.Table:
    import adbc_driver_sqlite

    with (
        adbc_driver_sqlite.connect(uri) as database,
        adbc.AdbcConnection(database) as con,
        adbc.AdbcStatement(con) as statement,
    ):
        statement.set_options(**{BATCH_ROWS: "65536"})  # default 1024: many small chunks
        statement.set_sql_query(sql)
        stream, _ = statement.execute_query()
        return pa.RecordBatchReader.from_stream(stream).read_all()  # without the GIL


def _sqlite3_arrow(uri: str, sql: str) -> pa.Table:
    con = sqlite3.connect(uri, uri=True)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
    finally:
        con.close()
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})


def _postgres_arrow(uri: str, sql: str) -> pa.Table:
    """COPY (query) TO STDOUT as CSV, parsed by Arrow: far faster than row-by-row fetches."""
    try:
        import psycopg2
    except ImportError:
        raise ConfigError(
            "reading a PostgreSQL MLflow store needs psycopg2: pip install 'segtrack-analytics[postgres]'"
        ) from None
    import pyarrow.csv as pacsv

    con = _postgres_connect(psycopg2, uri)
    try:
        con.set_session(readonly=True)
        buffer = io.BytesIO()
        with con.cursor() as cur:
            cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH CSV HEADER", buffer)
    except psycopg2.OperationalError as exc:  # the server went away during the read
        raise StoreUnreachable(f"the PostgreSQL store {redact(uri)}", _first_line(exc)) from None
    except psycopg2.Error as exc:
        raise StoreError(
            f"cannot read the PostgreSQL store {redact(uri)} ({_first_line(exc)}): "
            f"check the database, or pass another --tracking-uri"
        ) from None
    finally:
        con.close()
    buffer.seek(0)
    options = pacsv.ConvertOptions(
        strings_can_be_null=False,
        true_values=["t", "true"],
        false_values=["f", "false"],
        column_types={
            "run_id": pa.string(),
            "key": pa.string(),
            "value": pa.string(),
            "experiment_id": pa.string(),
            "experiment": pa.string(),
            "run_name": pa.string(),
            "status": pa.string(),
            "is_nan": pa.bool_(),
            "step": pa.int64(),
            "timestamp": pa.int64(),
            "start_time": pa.int64(),
            "end_time": pa.int64(),
        },
    )
    table = pacsv.read_csv(buffer, convert_options=options)
    if "step" in table.column_names:  # metric values arrive as text (the column type above): parse them
        import pyarrow.compute as pc

        table = table.set_column(
            table.column_names.index("value"), "value", pc.cast(table.column("value"), pa.float64())
        )
    return table


def _postgres_connect(psycopg2, uri: str):
    dsn = uri.replace(urlsplit(uri).scheme + "://", "postgresql://", 1)
    timeout = {} if "connect_timeout" in dsn else {"connect_timeout": PG_CONNECT_TIMEOUT}
    try:
        return psycopg2.connect(dsn, **timeout)
    except psycopg2.OperationalError as exc:  # down, wrong port, no such database or user, bad password
        raise StoreUnreachable(
            f"the PostgreSQL store {redact(uri)}",
            _first_line(exc),
            "start PostgreSQL, or pass the right --tracking-uri",
        ) from None


def _first_line(exc: Exception) -> str:
    """The driver's message without its connection preamble or follow-up lines."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0].rpartition(" failed: ")[2].removeprefix("FATAL:").strip()
