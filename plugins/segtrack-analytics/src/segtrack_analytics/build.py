"""From the raw source tables to what users query: one wide row per run, and metric histories.

Both are built column-wise (Arrow compute and DuckDB), never row by row in Python. The cache keeps
them as built, so a warm load builds nothing, and a refresh builds the rows of re-read runs only.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from segtrack_analytics.tables import RunDetails

# the ``metrics`` table users query
HISTORY = pa.schema(
    [
        ("run_id", pa.string()),
        ("key", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("timestamp", pa.timestamp("us")),
    ]
)
GROUPS = {"params": "params.", "tags": "tags.", "latest": "metrics."}  # RunDetails part: column prefix
LARGEST = 1.7976931348623157e308
RUN_COLUMNS = ["run_id", "experiment", "run_name", "status", "start_time", "end_time", "parent_run_id"]


def restore(value: pa.ChunkedArray, is_nan: pa.ChunkedArray) -> pa.ChunkedArray:
    """MLflow's SQL stores keep NaN as 0 with is_nan = 1 and clamp +-inf to the largest double."""
    value = pc.if_else(pc.greater_equal(value, LARGEST), float("inf"), value)
    value = pc.if_else(pc.less_equal(value, -LARGEST), float("-inf"), value)
    return pc.if_else(is_nan, float("nan"), value)


def history(metrics: pa.Table) -> pa.Table:
    """Full histories (METRIC schema) as the ``metrics`` table: values restored, times as timestamps."""
    columns = [
        metrics["run_id"],
        metrics["key"],
        metrics["step"],
        restore(metrics["value"], metrics["is_nan"]),
        pc.multiply(metrics["timestamp"], 1000).cast(pa.timestamp("us")),
    ]
    return pa.Table.from_arrays(columns, schema=HISTORY)


def encoded(history: pa.Table) -> pa.Table:
    """Run ids and keys as dictionaries (a fraction of the memory: a run's id repeats per point)."""
    for name in ("run_id", "key"):
        if not pa.types.is_dictionary(history.schema.field(name).type):
            index = history.column_names.index(name)
            history = history.set_column(index, name, pc.dictionary_encode(history[name]))
    return history


def rows_of(table: pa.Table, run_ids: pa.Array, keep: bool = True) -> pa.Table:
    """``table`` with only (``keep``) or without the rows of ``run_ids``. Only batches that change
    are copied (the histories hold millions of rows). Dictionary-encoded run ids are looked up in
    one dictionary, once (a lookup builds a hash set of ``run_ids``: per batch, 80,000,000 points
    took minutes)."""
    table = unified(table)
    batches, changed, known = [], False, None
    for batch in table.to_batches():
        ids = batch.column(batch.schema.get_field_index("run_id"))
        if isinstance(ids, pa.DictionaryArray):
            known = known if known is not None else pc.is_in(ids.dictionary, value_set=run_ids)
            hit = pc.take(known, ids.indices)
        else:
            hit = pc.is_in(ids, value_set=run_ids)
        if keep:
            hit = pc.invert(hit)  # the rows to leave out
        if pc.any(hit).as_py():
            batch, changed = batch.filter(pc.invert(hit)), True
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=table.schema) if changed else table


def unified(table: pa.Table) -> pa.Table:
    """``table`` with one dictionary per dictionary-encoded column (as an IPC file holds them); as
    it is when it has that already (unifying again walks every chunk's whole dictionary: minutes
    at 80,000,000 points)."""
    for field in table.schema:
        if pa.types.is_dictionary(field.type) and len({_address(c.dictionary) for c in table[field.name].chunks}) > 1:
            return table.unify_dictionaries()
    return table


def _address(array: pa.Array) -> int | None:
    return next((b.address for b in array.buffers() if b is not None), None)


def wide(con: duckdb.DuckDBPyConnection, details: RunDetails) -> pa.Table:
    """One row per run that has any param, tag or metric: ``run_id``, then ``params.<key>``,
    ``tags.<key>`` and ``metrics.<key>`` (the latest value) columns."""
    pivots, names = [], []
    for part, prefix in GROUPS.items():
        table = getattr(details, part)
        if not table.num_rows:
            continue
        value = restore(table["value"], table["is_nan"]) if part == "latest" else table["value"]
        names.append(f"_long_{part}")
        con.register(names[-1], pa.table({"run_id": table["run_id"], "key": table["key"], "value": value}))
        # one filtered aggregate per key: a pivot without PIVOT's extra passes over the rows
        columns = ", ".join(
            f"first(value) FILTER (WHERE key = {_literal(k)}) AS {_identifier(prefix + k)}"
            for k in sorted(pc.unique(table["key"]).to_pylist())
        )
        pivots.append(f"(SELECT run_id, {columns} FROM {names[-1]} GROUP BY run_id)")
    if not pivots:
        return pa.table({"run_id": pa.array([], pa.string())})
    joined = " FULL JOIN ".join(pivots[:1] + [f"{p} USING (run_id)" for p in pivots[1:]])
    try:
        return con.sql(f"SELECT * FROM {joined}").to_arrow_table()
    finally:
        for name in names:
            con.unregister(name)


def runs(con: duckdb.DuckDBPyConnection, index: pa.Table, wide: pa.Table) -> pa.Table:
    """The ``runs`` table: every run of ``index`` with its wide columns, oldest first."""
    con.register("_index", index)
    con.register("_wide", wide)
    columns = [c for c in wide.column_names if c != "run_id"]
    parent = '"tags.mlflow.parentRunId"' if "tags.mlflow.parentRunId" in columns else "NULL::VARCHAR"
    selects = "".join(", " + _identifier(c) for c in columns)
    try:
        table = con.sql(f"""
            SELECT i.run_id, i.experiment, i.run_name, i.status, epoch_ms(i.start_time) AS start_time,
                   epoch_ms(i.end_time) AS end_time, {parent} AS parent_run_id{selects}
            FROM _index i LEFT JOIN _wide w USING (run_id) ORDER BY i.start_time""").to_arrow_table()
    finally:
        con.unregister("_index")
        con.unregister("_wide")
    return arrange(table)


def arrange(runs: pa.Table) -> pa.Table:
    """Columns in their order (fixed ones, then params, tags, metrics, each sorted by key), rows
    oldest first; a no-op on a table already so (merged tables may not be)."""
    columns = RUN_COLUMNS + [
        c for p in GROUPS.values() for c in sorted(c for c in runs.column_names if c.startswith(p))
    ]
    if runs.column_names != columns:
        runs = runs.select(columns)
    start = runs["start_time"]
    if runs.num_rows > 1 and not pc.all(pc.less_equal(start.slice(0, len(start) - 1), start.slice(1))).as_py():
        runs = runs.sort_by("start_time")  # stable, nulls last as in DuckDB
    return runs


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
