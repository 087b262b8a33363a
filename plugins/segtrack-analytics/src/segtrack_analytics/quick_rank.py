"""Ranks printed in the training loop, read from a local SQLite store with one SQL query each: a
fit's rank among its experiment's runs (at fit end) and a trial's rank in its study (at trial end),
in milliseconds where a full analytics load (DuckDB, pyarrow, pandas) costs a short fit ~0.8 s.
Other stores, and any trouble here, go through ``RunAnalytics``."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

RANK_SQL = """
SELECT count(*), coalesce(sum(m.value {better} ?), 0)
FROM latest_metrics m
JOIN runs r ON r.run_uuid = m.run_uuid
JOIN experiments e ON e.experiment_id = r.experiment_id
WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active'
  AND m.key = ? AND m.is_nan = 0
  AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = 'segtrack.fit_id' AND t.value = ?)
"""

# a study's trial runs carry its segtrack.study_id, their number and their value as the metric
# trial_value (a CV trial's folds carry the id too, without the metric); this trial's own stored run
# is left out; an equal value ranks ahead when its trial number is lower (as `runs sweep` orders them)
STUDY_RANK_SQL = """
SELECT count(*), coalesce(sum(m.value {better} ? OR (m.value = ? AND CAST(n.value AS INTEGER) < ?)), 0)
FROM latest_metrics m
JOIN runs r ON r.run_uuid = m.run_uuid
JOIN experiments e ON e.experiment_id = r.experiment_id
JOIN tags s ON s.run_uuid = r.run_uuid AND s.key = 'segtrack.study_id' AND s.value = ?
JOIN tags n ON n.run_uuid = r.run_uuid AND n.key = 'segtrack.trial'
WHERE e.name = ? AND e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active'
  AND m.key = 'trial_value' AND m.is_nan = 0 AND n.value <> ?
"""


def rank_in_sqlite_store(
    uri: str, experiment: str, metric: str, value: float, mode: str, fit_id: str | None
) -> tuple[int, int] | None:
    """(rank of ``value``, number of ranked runs) as ``RunAnalytics.rank_of`` gives it (``fit_id``:
    the fit's own value, counted once), or None when ``uri`` is not a readable local SQLite store."""
    counted = _count(uri, RANK_SQL.format(better=_better(mode)), [value, experiment, metric, fit_id or ""])
    if counted is None:
        return None
    total, ahead = counted
    return ahead + 1, total + (fit_id is not None)


def study_rank_in_sqlite_store(
    uri: str, experiment: str, study_id: str, trial: int, value: float, mode: str
) -> tuple[int, int] | None:
    """(rank of trial ``trial``'s ``value``, number of ranked trials) among the trials of the study
    ``study_id`` that have a value, as ``RunAnalytics.rank_in_study`` gives it, or None when ``uri``
    is not a readable local SQLite store."""
    sql = STUDY_RANK_SQL.format(better=_better(mode))
    counted = _count(uri, sql, [value, value, trial, study_id, experiment, str(trial)])
    if counted is None:
        return None
    total, ahead = counted
    return ahead + 1, total + 1


def _better(mode: str) -> str:
    return ">" if mode == "max" else "<"


def _count(uri: str, sql: str, parameters: list[Any]) -> tuple[int, int] | None:
    """The (count, ahead) row of ``sql`` in the local SQLite store ``uri``, opened read-only."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///") :].split("?")[0])
    if not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2)) as db:
            total, ahead = db.execute(sql, parameters).fetchone()
    except sqlite3.Error:
        return None  # locked, or not MLflow's schema: the full path says what is wrong
    return int(total), int(ahead)
