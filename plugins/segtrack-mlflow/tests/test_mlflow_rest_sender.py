"""The shipper talks to a tracking server through its REST API without importing MLflow: every
kind of record arrives as MLflow's own client would have sent it, refusals are told apart from
outages, and a server restarted under a kept-alive connection costs no failed round."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from segtrack_mlflow import store
from segtrack_mlflow.entries import CreateRun, DatasetInputs, Params, Status, Tags
from segtrack_mlflow.sender_rest import RestError, RestSender
from segtrack_mlflow.shipper import ship
from segtrack_mlflow.spool import Spool

SHIP_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
import segtrack_mlflow.shipper_process
from segtrack_mlflow.shipper import ship
from segtrack_mlflow.spool import Spool
from segtrack_mlflow.store import Clients
sent = ship(Spool(Path(sys.argv[1]), writer=False), Clients())
tops = {m.split(".")[0] for m in sys.modules}
# neither MLflow's client nor segtrack's plugin machinery (pluggy, the trainer): a shipper starts light
print(json.dumps({"sent": sent, "imported": sorted(tops & {"mlflow", "pluggy", "torch"})}))
"""


def _spool(root: Path, uri: str) -> Spool:
    spool = Spool.create(root, {"tracking_uri": uri, "experiment": "rest", "run_name": "rest-run", "parent": None})
    spool.add(CreateRun("rest", "rest-run", {"segtrack.kind": "fit"}, None, 1_700_000_000_000))
    spool.add(Params({"train.lr": "0.001", "model.name": "unet"}))
    spool.add(Tags({"segtrack.best_epoch": "2"}))
    for step, value in enumerate([0.5, math.nan, math.inf, -math.inf]):
        spool.metric("val_dice", value, step, timestamp_ms=1_700_000_000_000 + step)
    checkpoint = root / "best.pt"
    checkpoint.write_bytes(b"checkpoint bytes " * 1000)
    spool.add_file(checkpoint, "checkpoints", slot="best")
    dataset = {"digest": "d" * 32, "source_type": "code", "source": "{}", "profile": "{}"}
    spool.add(
        DatasetInputs(
            [
                {**dataset, "name": "shapes-train", "context": "training"},
                {**dataset, "name": "shapes-val", "context": "validation"},
            ]
        )
    )
    spool.add(Status("FINISHED", 1_700_000_100_000))
    spool.close()
    return spool


def test_a_server_is_sent_every_kind_of_record_without_importing_mlflow(sqlite_server, tmp_path):
    folder = _spool(tmp_path / "spool", sqlite_server.uri).folder
    out = subprocess.run(
        [sys.executable, "-c", SHIP_IN_A_FRESH_PROCESS, str(folder)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"sent": 10, "imported": []}

    client = MlflowClient(sqlite_server.uri)
    run = client.get_run(Spool(folder, writer=False).run_id)
    assert (run.info.run_name, run.info.status, run.info.end_time) == ("rest-run", "FINISHED", 1_700_000_100_000)
    assert run.data.params == {"train.lr": "0.001", "model.name": "unet"}
    assert run.data.tags["segtrack.best_epoch"] == "2" and run.data.tags["segtrack.kind"] == "fit"
    values = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_dice"), key=lambda m: m.step)]
    assert values[0] == 0.5 and math.isnan(values[1]) and values[2] > 1e300 and values[3] < -1e300
    (checkpoint,) = client.list_artifacts(run.info.run_id, "checkpoints")
    assert checkpoint.path == "checkpoints/best.pt" and checkpoint.file_size == len(b"checkpoint bytes ") * 1000
    contexts = {i.tags[0].value: i.dataset.name for i in run.inputs.dataset_inputs}
    assert contexts == {"training": "shapes-train", "validation": "shapes-val"}


def test_a_refusal_is_told_apart_from_an_outage(sqlite_server, tmp_path):
    sender = RestSender(sqlite_server.uri)
    run_id = sender.create_run(sender.experiment_id("rest-refusals"), 1_700_000_000_000, {}, "refused")
    sender.log_batch(run_id, [], {"train.lr": "0.1"}, {})
    with pytest.raises(RestError) as refused:  # MLflow never lets a param change its value
        sender.log_batch(run_id, [], {"train.lr": "0.2"}, {})
    assert store.is_rejected(refused.value) and refused.value.error_code == "INVALID_PARAMETER_VALUE"
    sender.close()

    down = RestSender("http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(OSError) as unreachable:
        down.experiment_id("rest-refusals")
    assert not store.is_rejected(unreachable.value)


def test_a_restarted_server_is_reached_again_without_a_failed_round(own_server, tmp_path):
    spool = _spool(tmp_path / "spool", own_server.uri)
    sender = RestSender(own_server.uri)
    sender.experiment_id("before-the-restart")  # the connection is kept alive from here
    own_server.stop()
    own_server.start()
    assert ship(spool, {own_server.uri: sender}) == 10
    sender.close()
    assert MlflowClient(own_server.uri).get_run(spool.run_id).info.status == "FINISHED"
