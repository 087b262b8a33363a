"""Metric histories read when first queried. A load builds ``runs`` from params, tags and latest
metrics alone (all that summaries and top-N need); the full histories, ~20x as many rows, wait
for the first query of ``metrics`` (SqlSource; other sources read them with the rest)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa

from segtrack_analytics import build
from segtrack_analytics.tables import Source

# the table ``metrics`` (not a ``"metrics.<key>"`` column of runs): a query that may read it
_TABLE = re.compile(r"\bmetrics\b(?!\.\w)", re.IGNORECASE)


def mentions_metrics(sql: str) -> bool:
    return _TABLE.search(sql) is not None


class PendingHistory:
    """The histories of the runs of ``index``, read from ``source`` when ``read`` is first called."""

    def __init__(self, source: Source, experiments: Sequence[str] | None, index: pa.Table):
        self.source, self.experiments, self.index = source, experiments, index
        self.rows: int | None = None  # once read

    def read(self) -> pa.Table:
        # runs created since the index was read wait for the next load, as their rows do
        history = build.rows_of(self.source.histories_all(self.experiments), self.index["run_id"].combine_chunks())
        self.rows = history.num_rows
        return history

    def count(self) -> int:
        """Rows of the histories: counted in the store until they are read."""
        return self.rows if self.rows is not None else self.source.count_points(self.experiments)
