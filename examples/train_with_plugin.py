"""Train with a plugin passed in code: early stopping on the monitored metric.

python examples/train_with_plugin.py --set train.epochs=20
"""

from __future__ import annotations

import argparse
import math

from segtrack import SegmentationTrainer, hookimpl, load_settings


class EarlyStopping:
    """Stops the fit when the monitored metric has not improved for ``patience`` epochs."""

    name = "early_stopping"

    def __init__(self, patience: int = 3):
        self.patience = patience
        self.stale = 0

    @hookimpl
    def epoch_end(self, trainer, epoch):
        self.stale = 0 if epoch.is_best else self.stale + 1
        if self.stale >= self.patience:
            trainer.request_stop(f"{epoch.monitor} did not improve for {self.patience} epochs")

    # the counter rides in checkpoints, so a resumed fit keeps counting
    @hookimpl
    def state_dict(self):
        return {"stale": self.stale}

    @hookimpl
    def load_state_dict(self, state):
        self.stale = state["stale"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    result = SegmentationTrainer(load_settings(overrides=args.overrides), plugins=[EarlyStopping(args.patience)]).fit()
    best = "nan" if math.isnan(result.best_value) else f"{result.best_value:.4f}"
    print(
        f"{result.status}: {result.epochs_completed} epochs, best {result.monitor} {best}"
        + (f" ({result.stop_reason})" if result.stop_reason else "")
    )


if __name__ == "__main__":
    main()
