"""Learning curves: one line per run (or fold), and per cross-validation the mean +- std band of
its folds (only folds: a study's trials, also children of a parent run, are each their own line).
Drawn against the epoch where a curve has one point per epoch (segtrack logs every curve at the
global step with an ``epoch`` metric beside it: folds of different sizes share epochs, not steps),
else against the step."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from segtrack import ConfigError
from segtrack_analytics.columns import FOLD_COLUMN

SUFFIXES = (".png", ".svg", ".pdf")


def plot_learning_curves(analytics, metric: str, out: Path, title: str | None = None) -> Path:
    """Draw ``learning_curves_figure`` into ``out`` (through a temporary file)."""
    out = check_out(Path(out))
    fig = learning_curves_figure(analytics, metric, title)
    import matplotlib.pyplot as plt  # after learning_curves_figure chose the Agg backend

    try:
        _save(fig, out)
    finally:
        plt.close(fig)
    return out


def learning_curves_figure(analytics, metric: str, title: str | None = None):
    """The curves of ``metric`` as a matplotlib Figure: one line per run, and per cross-validation
    its folds' lines, their mean and a +- std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    key = metric.removeprefix("metrics.")
    curves, by_epoch = learning_curves(analytics, key)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    groups: dict[str | None, list[dict]] = {}
    for curve in curves.values():  # folds grouped by their CV parent; any other run stands alone
        groups.setdefault(curve["parent"] if curve["fold"] else None, []).append(curve)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    used = 0  # one colour per run that stands alone and per cross-validation
    for parent, members in groups.items():
        for curve in members:
            xs = sorted(curve["points"])
            colour = colours[used % len(colours)]
            used += parent is None
            ax.plot(
                xs,
                [curve["points"][x] for x in xs],
                color=colour,
                alpha=0.45 if parent else 0.9,
                linewidth=1,
                label=None if parent else curve["name"],
            )
        used += parent is not None
        if parent and len(members) > 1:
            xs = sorted(set.intersection(*(set(c["points"]) for c in members)))
            values = np.array([[c["points"][x] for x in xs] for c in members], dtype=float)
            mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
            label = analytics.con.execute("SELECT run_name FROM runs WHERE run_id = ?", [parent]).fetchone()
            ax.plot(
                xs,
                mean,
                color=colour,
                linewidth=2.2,
                label=f"{label[0] if label else parent[:8]}: mean of {len(members)} folds",
            )
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.18)
    ax.set_xlabel("epoch" if by_epoch else "step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs and steps are whole numbers
    ax.set_ylabel(key)
    ax.set_title(title or f"{key}: {len(curves)} run(s)")
    ax.grid(alpha=0.3)
    _handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def learning_curves(analytics, key: str) -> tuple[dict[str, dict], bool]:
    """Per run: name, parent run id, whether it is a cross-validation fold, and ``points`` {x:
    value}; and whether x is the epoch (else the step)."""
    fold = f'r."{FOLD_COLUMN}"' if FOLD_COLUMN in analytics.columns else "NULL"
    rows = analytics.con.execute(
        f"SELECT m.run_id, r.run_name, r.parent_run_id, {fold}, m.step, m.value, e.epoch FROM metrics m "
        "JOIN runs r USING (run_id) LEFT JOIN (SELECT run_id, step, max(value) AS epoch FROM metrics "
        "WHERE key = 'epoch' GROUP BY run_id, step) e USING (run_id, step) "
        "WHERE m.key = ? ORDER BY r.start_time, m.run_id, m.step, m.timestamp",
        [key],
    ).fetchall()
    if not rows:
        raise ConfigError(
            f"no run has a history of {key!r}: pick a metric from "
            f"{', '.join(c[8:] for c in analytics.columns if c.startswith('metrics.'))}"
        )
    curves: dict[str, dict] = {}
    for run_id, name, parent, fold, step, value, epoch in rows:
        curve = curves.setdefault(
            run_id, {"name": name or run_id[:8], "parent": parent, "fold": fold is not None, "points": {}, "epochs": {}}
        )
        curve["points"][step] = value  # the last point logged for a step wins
        curve["epochs"][step] = epoch
    by_epoch = all(
        None not in c["epochs"].values() and len(set(c["epochs"].values())) == len(c["points"]) for c in curves.values()
    )
    if by_epoch:  # one point per epoch in every run: x is the epoch
        for curve in curves.values():
            curve["points"] = {int(curve["epochs"][s]): v for s, v in curve["points"].items()}
    return curves, by_epoch


def check_out(out: Path) -> Path:
    """``out`` if a plot can be written there: a file name with a supported extension."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: name the image file, e.g. --out {out / 'learning-curves.png'}")
    if out.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"--out {out} names no supported image type: end it in {', '.join(SUFFIXES)}")
    return out


def _save(fig, out: Path) -> None:
    """Through a temporary file beside ``out``: a failed write leaves no partial image."""
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, format=out.suffix[1:].lower())
        os.replace(tmp, out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(
            f"cannot write --out {out} ({exc.strerror or exc}): pass a path in a folder you can write to"
        ) from None
