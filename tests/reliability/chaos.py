"""A training entry point with an optional chaos plugin that SIGKILLs its own process at a chosen
moment, e.g. `--kill state_dict:2:0.002` kills 2 ms after the state for epoch 2's checkpoint
was collected, i.e. while that checkpoint is being written.

    python chaos.py [--kill HOOK:EPOCH:DELAY] --set key=value ...   (always resumes from last.pt if present)
"""

from __future__ import annotations

import argparse
import os
import signal
import threading

from segtrack import hookimpl


class Chaos:
    name = "chaos"

    def __init__(self, hook: str, epoch: int, delay: float):
        self.hook, self.epoch, self.delay = hook, epoch, delay

    def _arm(self, epoch: int) -> None:
        if epoch == self.epoch:
            threading.Timer(self.delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

    @hookimpl
    def epoch_end(self, epoch):
        if self.hook == "epoch_end":
            self._arm(epoch.epoch)

    @hookimpl
    def state_dict(self):
        if self.hook == "state_dict":
            self._arm(self._epoch)

    @hookimpl
    def checkpoint_saved(self, checkpoint):
        if self.hook == "checkpoint_saved" and checkpoint.kind == "last":
            self._arm(checkpoint.epoch)

    @hookimpl
    def epoch_start(self, epoch):
        self._epoch = epoch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill", help="HOOK:EPOCH:DELAY_SECONDS")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    from segtrack.config.settings import load_settings
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    settings = load_settings(overrides=args.overrides)
    extra = []
    if args.kill:
        hook, epoch, delay = args.kill.split(":")
        extra.append(Chaos(hook, int(epoch), float(delay)))
    manager = get_plugin_manager(settings, extra)
    result = SegmentationTrainer(settings, plugin_manager=manager).fit(resume="auto")
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
