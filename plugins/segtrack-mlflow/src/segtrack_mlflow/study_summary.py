"""A study parent's run description (``mlflow.note.content``, shown as markdown on the run page):
the best trial named and linked, then one row per trial this process ran (number, state, value,
sampled values, its run as a link)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_NOTE = 5000  # MLflow's tag value limit


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    run_name: str
    run_id: str | None  # None until the shipper created the trial's run


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _run_link(row: TrialRow, experiment_id: str | None) -> str:
    # a link relative to the UI's own address: the same note works behind any host name
    if row.run_id and experiment_id:
        return f"[{row.run_name}](#/experiments/{experiment_id}/runs/{row.run_id})"
    return row.run_name


def describe(
    study: str,
    objective: str,
    direction: str,
    rows: list[TrialRow],
    best: tuple[int, float] | None,
    experiment_id: str | None,
) -> str:
    """The markdown description; ``best``: the study's best (number, value) across every process."""
    keys = sorted({key for row in rows for key in row.params})
    lines = [f"**Study `{study}`**: {len(rows)} trial(s) run by this process, `{objective}` ({direction})", ""]
    if best is not None:
        number, value = best
        own = next((row for row in rows if row.number == number), None)
        where = f": {_run_link(own, experiment_id)}" if own else " (run by another process)"
        lines += [f"Best trial: **{number}**, {objective} = **{_number(value)}**{where}", ""]
    header = ["trial", "state", objective, *keys, "run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: r.number):
        sampled = [_number(row.params.get(key)) for key in keys]
        cells = [str(row.number), row.state, _number(row.value), *sampled, _run_link(row, experiment_id)]
        lines.append("| " + " | ".join(cells) + " |")
    note = "\n".join(lines)
    return note if len(note) <= MAX_NOTE else note[: MAX_NOTE - 20] + "\n\n(table cut)"
