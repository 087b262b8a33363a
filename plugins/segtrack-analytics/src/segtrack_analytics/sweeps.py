"""A study's trials (``segtrack sweep``, read through segtrack-optuna) ranked in DuckDB, and drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segtrack import ConfigError


def read_study_table(name: str, storage: str | None, settings: Any) -> Any:
    """The study as segtrack-optuna reads it; the storage defaults to ``segtrack sweep``'s."""
    try:
        from segtrack_optuna.report import read_study
        from segtrack_optuna.storage import default_storage
    except ImportError:
        raise ConfigError("reading a study needs the segtrack-optuna plugin: pip install segtrack-optuna") from None
    sweep = settings.get("sweep") or {}
    url = storage or sweep.get("storage") or default_storage()
    return read_study(name, url, int(sweep.get("stale_after_s") or 180))


def ranked_trials(study: Any) -> Any:
    """Every trial, best first by the study's objective (trials without a value last)."""
    import duckdb
    import pyarrow as pa

    params = [f"params.{k}" for k in study.params]
    columns = ["trial", "state", "value", "epochs", "duration_s", *params, "run", "error"]
    table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in study.rows]) if study.rows else None
    if table is None:
        raise ConfigError(f"study {study.name!r} has no trial yet: run `segtrack sweep --study {study.name}` first")
    order = "DESC" if study.direction == "maximize" else "ASC"
    con = duckdb.connect()
    con.register("trials", table)
    quoted = ", ".join(f'"{c}"' for c in columns)
    return con.sql(
        f"SELECT row_number() OVER (ORDER BY value {order} NULLS LAST, trial) AS rank, {quoted} "
        f"FROM trials ORDER BY rank"
    ).to_arrow_table()


def plot_study(study: Any, out: Path) -> Path:
    """The objective per trial (with the best so far) and against each searched setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from segtrack_analytics.plot import check_out

    out = check_out(Path(out))
    scored = [r for r in study.rows if r["value"] is not None]
    if not scored:
        raise ConfigError(f"study {study.name!r} has no trial with a value yet: nothing to plot")
    panels = 1 + len(study.params)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4), dpi=120, squeeze=False)
    ax = axes[0][0]
    colours = {"completed": "tab:blue", "pruned": "tab:orange"}
    for state, colour in colours.items():
        points = [(r["trial"], r["value"]) for r in scored if r["state"] == state]
        if points:
            ax.scatter(*zip(*points), color=colour, label=state, s=22)
    best, line = None, []
    for r in sorted((r for r in scored if r["state"] == "completed"), key=lambda r: r["trial"]):
        better = max if study.direction == "maximize" else min
        best = r["value"] if best is None else better(best, r["value"])
        line.append((r["trial"], best))
    if line:
        ax.step(*zip(*line), where="post", color="black", linewidth=1, label="best so far")
    ax.set(xlabel="trial", ylabel="objective", title=f"study {study.name} ({study.direction})")
    ax.legend(fontsize=8)
    for ax, key in zip(axes[0][1:], study.params):
        for state, colour in colours.items():
            points = [(r[f"params.{key}"], r["value"]) for r in scored if r["state"] == state]
            if points:
                xs, ys = zip(*points)
                ax.scatter([str(x) if isinstance(x, str) else x for x in xs], ys, color=colour, s=22)
        if key in study.log_scale:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel="objective")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
