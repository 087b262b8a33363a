"""A running trial's heartbeat: a thread that stamps the trial in the storage every few seconds.

A worker killed outright (SIGKILL, the OOM killer, a lost node) cannot say its trial ended; the
stamps stopping say it. Any other worker of the study then fails the trial and queues it again
(``OptunaTrials.reap``). The stamp is Optuna's own (``RDBStorage.record_heartbeat``), so
``optuna.storages.fail_stale_trials`` and optuna-dashboard read the same thing.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("segtrack.sweep")


class Heartbeat:
    def __init__(self, storage: Any, trial_id: int, interval_s: float):
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._failing = False
        self.storage.record_heartbeat(trial_id)  # at once: a trial without any stamp is never found stale
        self._thread = threading.Thread(target=self._run, name=f"segtrack-heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
                if self._failing:
                    log.info("the Optuna storage takes this trial's heartbeat again")
                self._failing = False
            except Exception as exc:  # a storage outage: keep training, keep trying
                if not self._failing:
                    log.warning(
                        "cannot record this trial's heartbeat (%s): if the storage stays away longer than "
                        "sweep.stale_after_s, another worker will take this trial as dead and queue it again",
                        type(exc).__name__,
                    )
                self._failing = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
