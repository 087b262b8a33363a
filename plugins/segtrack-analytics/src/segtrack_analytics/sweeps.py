"""A study's trials (``segtrack sweep``, read through segtrack-optuna) ranked in DuckDB, and drawn."""

from __future__ import annotations

import math
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
    """Draw ``study_figure`` into ``out`` (through a temporary file: a failed write leaves nothing)."""
    from segtrack_analytics.plot import _save, check_out

    out = check_out(Path(out))
    fig = study_figure(study)
    import matplotlib.pyplot as plt  # after study_figure chose the Agg backend

    try:
        _save(fig, out)
    finally:
        plt.close(fig)
    return out


def study_figure(study: Any) -> Any:
    """The objective per trial (with the best so far) and against each searched setting: a
    matplotlib Figure, whose first axes is the trial panel, then one per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are numbered: no trial 1.5
    ax.legend(fontsize=8)
    for ax, key in zip(axes[0][1:], study.params):
        drawn: list[Any] = []
        for state, colour in colours.items():
            points = [(r[f"params.{key}"], r["value"]) for r in scored if r["state"] == state]
            if points:
                xs, ys = zip(*points)
                drawn += xs
                ax.scatter([str(x) if isinstance(x, str) else x for x in xs], ys, color=colour, s=22)
        if key in study.log_scale:
            _log_axis(ax)
        elif drawn and all(isinstance(x, int) and not isinstance(x, bool) for x in drawn):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # an integer setting (width, depth)
        ax.set(xlabel=key, ylabel="objective")
    fig.tight_layout()
    return fig


def _log_axis(ax: Any) -> None:
    """A log x axis with a few labels that do not overlap (matplotlib labels minor ticks on an
    axis spanning less than a decade, e.g. 1.25e-3 to 2.75e-3, and those ran into each other):
    ``log_ticks``, else (the values within a factor of ~5) a few round linear values; labels as
    the tables print numbers (4 significant digits), no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

    ax.set_xscale("log")
    ax.autoscale_view()
    lo, hi = ax.get_xlim()
    ticks = log_ticks(lo, hi)
    if len(ticks) < 2:
        ticks = [t for t in MaxNLocator(nbins=3).tick_values(lo, hi) if lo <= t <= hi and t > 0]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)


def log_ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Round values in [lo, hi] for a log axis: 1, 2 and 5 times the powers of ten when at most
    ``most`` of them fit, else the powers of ten (every k-th on a wide axis, at most ``most``);
    fewer than 2 when none fit."""
    if not (0 < lo < hi):
        return []
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    powers: list[float] = []
    for steps in ((1, 2, 5), (1,)):
        ticks = [v for e in range(first, last + 1) for m in steps if lo <= (v := float(f"{m}e{e}")) <= hi]
        if 2 <= len(ticks) <= most:
            return ticks
        powers = ticks
    return powers[:: math.ceil(len(powers) / most)] if len(powers) >= 2 else []
