"""A summary of each study (``segtrack sweep``) in the ``runs`` table: its trials by state and its
best completed trial. A study's trial runs hang under its parent runs (one per worker process) as
a CV's folds hang under theirs, but they are different settings, never averaged as folds."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from segtrack_analytics.columns import (
    FOLD_COLUMN,
    ROLE_COLUMN,
    STUDY_ID_COLUMN,
    TRIAL_COLUMN,
    TRIAL_STATE_COLUMN,
    TRIAL_VALUE_COLUMN,
)

STUDY_SUMMARY = pa.schema(
    [
        ("study", pa.string()),
        ("objective", pa.string()),
        ("direction", pa.string()),  # "max" or "min"
        ("trials", pa.int64()),
        ("completed", pa.int64()),
        ("pruned", pa.int64()),
        ("failed", pa.int64()),
        ("unfinished", pa.int64()),  # running, or its worker stopped before the verdict
        ("best_trial", pa.int64()),
        ("best_value", pa.float64()),
        ("best_run", pa.string()),
        ("study_id", pa.string()),
    ]
)


def study_summary_sql(columns: Sequence[str]) -> str | None:
    """DuckDB SQL giving one STUDY_SUMMARY row per study id over ``runs`` with these ``columns``
    (None: no run belongs to a study). A trial is a run with the study's id and a trial number
    that is not a fold (a CV trial's folds carry both); its value is ``trial_value``, its state
    ``segtrack.trial_state``. The best trial is the best value among completed trials, by the
    direction the study's parent runs record, the lowest number among equals (as Optuna picks)."""
    have = set(columns)
    if not {STUDY_ID_COLUMN, TRIAL_COLUMN} <= have:
        return None

    def column(name: str, cast: str = "VARCHAR") -> str:
        return f'TRY_CAST("{name}" AS {cast})' if name in have else f"CAST(NULL AS {cast})"

    value = f"coalesce({column(TRIAL_VALUE_COLUMN, 'DOUBLE')}, {column('tags.segtrack.trial_value', 'DOUBLE')})"
    role = column(ROLE_COLUMN)
    # "max" or "min" (segtrack-mlflow records Optuna's "maximize"; the base settings hold checkpoint.mode)
    direction = (
        f"CASE WHEN coalesce({column('params.study.direction')}, {column('params.checkpoint.mode')}) "
        "LIKE 'min%' THEN 'min' ELSE 'max' END"
    )
    objective = f"coalesce({column('params.study.objective')}, {column('params.checkpoint.monitor')})"
    best = "place = 1 AND state = 'completed' AND value IS NOT NULL"
    return f"""
    WITH trials AS (
        SELECT "{STUDY_ID_COLUMN}" AS study_id, {column("tags.segtrack.study")} AS study,
               TRY_CAST("{TRIAL_COLUMN}" AS BIGINT) AS trial, run_name, start_time,
               coalesce({column(TRIAL_STATE_COLUMN)}, CASE WHEN status = 'RUNNING' THEN 'running' END) AS state,
               CASE WHEN isnan({value}) THEN NULL ELSE {value} END AS value
        FROM runs
        WHERE "{STUDY_ID_COLUMN}" IS NOT NULL AND "{TRIAL_COLUMN}" IS NOT NULL AND {column(FOLD_COLUMN)} IS NULL
          AND {role} IS DISTINCT FROM 'study-parent'
    ), studies AS (
        SELECT "{STUDY_ID_COLUMN}" AS study_id, any_value({objective}) AS objective, any_value({direction}) AS direction
        FROM runs WHERE {role} = 'study-parent' GROUP BY 1
    ), placed AS (
        SELECT t.*, s.objective, s.direction, row_number() OVER (
                   PARTITION BY t.study_id
                   ORDER BY (t.state = 'completed' AND t.value IS NOT NULL) DESC,
                            CASE WHEN s.direction = 'min' THEN t.value ELSE -t.value END, t.trial
               ) AS place
        FROM trials t LEFT JOIN studies s USING (study_id)
    )
    SELECT any_value(study) AS study, any_value(objective) AS objective, any_value(direction) AS direction,
           count(*) AS trials,
           count(*) FILTER (WHERE state = 'completed') AS completed,
           count(*) FILTER (WHERE state = 'pruned') AS pruned,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           count(*) FILTER (WHERE state IS NULL OR state NOT IN ('completed', 'pruned', 'failed')) AS unfinished,
           any_value(trial) FILTER (WHERE {best}) AS best_trial,
           any_value(value) FILTER (WHERE {best}) AS best_value,
           any_value(run_name) FILTER (WHERE {best}) AS best_run,
           study_id
    FROM placed GROUP BY study_id ORDER BY min(start_time), study_id
    """
