"""The raw tables every source produces, as Arrow, with one schema whatever the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

RUN_INDEX = pa.schema(
    [
        ("run_id", pa.string()),
        ("experiment_id", pa.string()),
        ("experiment", pa.string()),
        ("run_name", pa.string()),
        ("status", pa.string()),
        ("start_time", pa.int64()),
        ("end_time", pa.int64()),
    ]
)
KEY_VALUE = pa.schema([("run_id", pa.string()), ("key", pa.string()), ("value", pa.string())])
# value is stored as the store has it; is_nan says NaN (SQL stores keep NaN as 0 with is_nan = 1)
METRIC = pa.schema(
    [
        ("run_id", pa.string()),
        ("key", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("timestamp", pa.int64()),
        ("is_nan", pa.bool_()),
    ]
)


@dataclass
class RunDetails:
    """Everything about a set of runs besides the run index."""

    params: pa.Table
    tags: pa.Table
    latest: pa.Table  # latest value of each metric per run (METRIC schema)
    metrics: pa.Table | None  # full histories (METRIC schema); None: not read (see Source.details)

    @classmethod
    def empty(cls) -> RunDetails:
        return cls(KEY_VALUE.empty_table(), KEY_VALUE.empty_table(), METRIC.empty_table(), METRIC.empty_table())


@dataclass(frozen=True)
class RunTables:
    """What a load builds and the cache keeps (see build.py)."""

    index: pa.Table  # RUN_INDEX: one row per run
    runs: pa.Table  # the ``runs`` table (build.runs)
    # the ``metrics`` table (build.HISTORY; run ids and keys may be dictionaries); None: not read yet
    history: pa.Table | None


class Source(Protocol):
    """A reader of one kind of MLflow store (``SqlSource``, ``RestSource``, ``FileSource``): it
    returns the raw tables above and never writes to the store."""

    def run_index(self, experiments: Sequence[str] | None) -> pa.Table:
        """One row per active run of ``experiments`` (None: every active experiment), RUN_INDEX schema."""
        ...

    def details(self, run_ids: Sequence[str], histories: bool = True) -> RunDetails:
        """Params, tags, latest metrics and full histories of ``run_ids``. Without ``histories`` a
        source may leave the histories out (metrics None: SqlSource), or read them anyway."""
        ...

    def details_all(self, experiments: Sequence[str] | None, histories: bool = True) -> RunDetails:
        """The same for every run of ``experiments`` (the cold-load path)."""
        ...

    def histories_all(self, experiments: Sequence[str] | None) -> pa.Table:
        """What details_all left out: the ``metrics`` table (build.HISTORY) of every run of
        ``experiments``, run ids and keys maybe as dictionaries."""
        ...

    def count_points(self, experiments: Sequence[str] | None) -> int:
        """How many rows ``histories_all`` would return, without reading them."""
        ...


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast the columns of ``schema`` (sources differ in integer widths and order)."""
    return pa.table([table.column(f.name).cast(f.type) for f in schema], schema=schema)
