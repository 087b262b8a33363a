"""Learning curves: one line per run (or fold), and per cross-validation the mean +- std band."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_learning_curves(analytics, metric: str, out: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = metric.removeprefix("metrics.")
    rows = analytics.con.execute(
        "SELECT m.run_id, r.run_name, r.parent_run_id, m.step, m.value FROM metrics m JOIN runs r USING (run_id) "
        "WHERE m.key = ? ORDER BY r.start_time, m.run_id, m.step, m.timestamp", [key]).fetchall()
    if not rows:
        from segtrack import ConfigError

        raise ConfigError(f"no run has a history of {key!r}: pick a metric from "
                          f"{', '.join(c[8:] for c in analytics.columns if c.startswith('metrics.'))}")
    curves: dict[str, dict] = {}
    for run_id, name, parent, step, value in rows:
        curve = curves.setdefault(run_id, {"name": name or run_id[:8], "parent": parent, "steps": {}})
        curve["steps"][step] = value  # the last point logged for a step wins
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    groups: dict[str | None, list[dict]] = {}
    for curve in curves.values():
        groups.setdefault(curve["parent"], []).append(curve)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (parent, members) in enumerate(groups.items()):
        colour = colours[index % len(colours)]
        for curve in members:
            steps = sorted(curve["steps"])
            ax.plot(steps, [curve["steps"][s] for s in steps], color=colour if parent else None,
                    alpha=0.45 if parent else 0.9, linewidth=1, label=None if parent else curve["name"])
        if parent and len(members) > 1:
            steps = sorted(set.intersection(*(set(c["steps"]) for c in members)))
            values = np.array([[c["steps"][s] for s in steps] for c in members], dtype=float)
            mean, std = values.mean(axis=0), values.std(axis=0, ddof=1)
            label = analytics.con.execute("SELECT run_name FROM runs WHERE run_id = ?", [parent]).fetchone()
            ax.plot(steps, mean, color=colour, linewidth=2.2,
                    label=f"{label[0] if label else parent[:8]}: mean of {len(members)} folds")
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.18)
    ax.set_xlabel("epoch" if key in ("train_loss", "val_loss", "val_dice", "val_iou", "lr") else "step")
    ax.set_ylabel(key)
    ax.set_title(title or f"{key}: {len(curves)} run(s)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
