"""Two senders of one spool (a fit's shipper thread and `segtrack mlflow sync`, or two processes)
must never create the run twice nor send a record twice."""

from __future__ import annotations

import threading

import pytest
from mlflow import MlflowClient
from mlflow_helpers import history, only_run

from segtrack_mlflow.shipper import ship
from segtrack_mlflow.spool import Spool, SpoolBusy
from segtrack_mlflow.uri import local_artifact_root

STEPS = 40


def _spool(root, uri) -> Spool:
    spool = Spool.create(root, {"tracking_uri": uri, "experiment": "segtrack", "run_name": "racer", "parent": None})
    spool.append({"t": "create", "experiment": "segtrack", "run_name": "racer", "tags": {}, "parent": None,
                  "ts": 1_700_000_000_000, "artifact_location": local_artifact_root(uri)})
    for step in range(STEPS):
        spool.metric("train_loss", 1.0 / (step + 1), step, timestamp_ms=1_700_000_000_000 + step)
    spool.append({"t": "status", "status": "FINISHED", "ts": 1_700_000_100_000})
    spool.close()
    return spool


def test_concurrent_senders_create_one_run_and_send_each_record_once(sqlite_uri, tmp_path):
    folder = _spool(tmp_path / "spool", sqlite_uri).folder
    senders = 4
    start, sent, errors = threading.Barrier(senders), [], []

    def send():
        spool = Spool(folder)  # its own open files, as a second process would have
        start.wait()
        try:
            sent.append(ship(spool, {}, wait=120))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert sum(sent) == STEPS + 2 and sorted(sent)[:-1] == [0] * (senders - 1)  # one sender did it all
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "train_loss") == [(s, 1.0 / (s + 1)) for s in range(STEPS)]


def test_a_spool_being_sent_elsewhere_is_left_alone(sqlite_uri, tmp_path):
    spool = _spool(tmp_path / "spool", sqlite_uri)
    with Spool(spool.folder).shipping():
        with pytest.raises(SpoolBusy, match="being sent by another process"):
            ship(spool, {}, wait=0.2)
        assert spool.has_pending()
    assert ship(spool, {}) == STEPS + 2 and not spool.has_pending()
