"""Against real `mlflow server` processes: SQLite and PostgreSQL backends, outages, offline
start, authentication."""

from __future__ import annotations

import shutil
import threading

import pytest
from mlflow import MlflowClient

import segtrack_mlflow
from segtrack import ConfigError, hookimpl
from segtrack.cli import main
from testsupport.mlflow_reads import artifacts, epochs_of, history, logged_settings, only_run

KEYS = ("train_loss", "val_loss", "val_dice", "val_iou", "lr")


def _assert_every_point_once(client, run_id, epochs, steps):
    per_epoch = steps // epochs  # every curve at the global step: epoch metrics at each epoch's last step
    for key in KEYS:
        assert [s for s, _ in history(client, run_id, key)] == [per_epoch * e for e in range(1, epochs + 1)], key
    assert [s for s, _ in history(client, run_id, "train_loss_step")] == list(range(1, steps + 1))


def test_fit_logs_to_a_server_with_proxied_artifacts(trainer_factory, sqlite_server):
    trainer_factory(f"mlflow.tracking_uri='{sqlite_server.uri}'", "run.experiment='server-fit'").fit()
    client = MlflowClient(sqlite_server.uri)
    run = only_run(client, "server-fit")
    assert run.info.status == "FINISHED"
    _assert_every_point_once(client, run.info.run_id, 3, 9)
    assert "checkpoints/best.pt" in artifacts(client, run.info.run_id)


def test_fit_logs_to_a_server_with_a_postgresql_backend(trainer_factory, postgres_uri, tmp_path):
    from testsupport.mlflow_server import MlflowServer

    server = MlflowServer(postgres_uri, tmp_path).start()
    try:
        result = trainer_factory(f"mlflow.tracking_uri='{server.uri}'").cv(folds=2)
        client = MlflowClient(server.uri)
        parent = only_run(client, filter_string="tags.`segtrack.role` = 'cv-parent'")
        assert parent.data.metrics["cv_val_dice_mean"] == pytest.approx(result.summary["val_dice"]["mean"])
        children = client.search_runs([parent.info.experiment_id], filter_string="tags.`segtrack.fold` != ''")
        assert len(children) == 2
        for child in children:  # 8 training samples per fold: 2 steps per epoch
            _assert_every_point_once(client, child.info.run_id, 3, 6)
    finally:
        server.stop()


class Outage:
    """Kills the server at the start of one epoch and restarts it (in the background) at another."""

    def __init__(self, server, down_at: int, up_at: int):
        self.server, self.down_at, self.up_at = server, down_at, up_at
        self.restarted: threading.Thread | None = None

    @hookimpl
    def epoch_start(self, epoch):
        if epoch == self.down_at:
            self.server.stop()
        if epoch == self.up_at:
            self.restarted = threading.Thread(target=self.server.start)
            self.restarted.start()


def test_server_killed_mid_fit_loses_and_duplicates_nothing(trainer_factory, own_server, caplog):
    outage = Outage(own_server, down_at=2, up_at=6)
    trainer = trainer_factory(
        f"mlflow.tracking_uri='{own_server.uri}'",
        "train.epochs=8",
        "mlflow.request_timeout=2",
        "mlflow.quiet_start=0",  # sending while it is down (a loopback server otherwise gets it all at the end)
        plugins=[outage],
    )
    result = trainer.fit()
    outage.restarted.join()
    assert result.status == "completed" and not result.plugin_failures
    assert "MLflow unreachable" in caplog.text  # the outage really hit the shipper
    client = MlflowClient(own_server.uri)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    _assert_every_point_once(client, run.info.run_id, 8, 24)
    assert artifacts(client, run.info.run_id)[:2] == ["checkpoints/best.pt", "checkpoints/last.pt"]


def test_offline_start_then_sync(trainer_factory, own_server, caplog, capsys):
    uri = own_server.uri
    own_server.stop()
    result = trainer_factory(
        f"mlflow.tracking_uri='{uri}'", "mlflow.drain_timeout=1", "mlflow.request_timeout=1", "export.enabled=true"
    ).fit()
    assert result.status == "completed"
    assert "is unreachable" in caplog.text and "segtrack mlflow sync" in caplog.text
    own_server.start()

    sets = (
        ["--set", f"mlflow.tracking_uri='{uri}'", "--set", "plugins.disabled=['analytics']"]
        if _has_analytics()
        else ["--set", f"mlflow.tracking_uri='{uri}'"]
    )
    assert main(["mlflow", "sync", *sets]) == 0
    client = MlflowClient(uri)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    _assert_every_point_once(client, run.info.run_id, 3, 9)
    # replaying again changes nothing
    capsys.readouterr()
    assert main(["mlflow", "sync", *sets]) == 0
    assert "nothing left to send" in capsys.readouterr().out
    _assert_every_point_once(client, only_run(client).info.run_id, 3, 9)
    # the LoggedModel and the datasets went through the spool too, once
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.status.name == "READY" and model.source_run_id == run.info.run_id
    assert len(only_run(client).inputs.dataset_inputs) == 2


def _has_analytics() -> bool:
    from segtrack.plugins.manager import installed_entry_points

    return "analytics" in installed_entry_points()


def test_offline_fail_stops_before_training(trainer_factory, tmp_path):
    from testsupport.ports import free_port

    with pytest.raises(ConfigError, match=r"is unreachable.*mlflow.offline = \"fail\""):
        trainer_factory(f"mlflow.tracking_uri='http://127.0.0.1:{free_port()}'", "mlflow.offline='fail'")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / ".segtrack").exists()


@pytest.fixture
def auth_server(tmp_path, sqlite_template):
    from testsupport.mlflow_server import basic_auth_server

    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    shutil.copy(sqlite_template, tmp_path / "auth-backend.db")
    server = basic_auth_server(tmp_path, tmp_path / "auth-backend.db", "segtrack-admin-pw").start()
    yield server
    server.stop()


@pytest.mark.slow  # make test is at its 10-minute budget: `make reliability` runs it
def test_authenticated_server_good_and_bad_credentials_from_env_and_uri(trainer_factory, auth_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(ConfigError, match="rejected the credentials"):
        trainer_factory(f"mlflow.tracking_uri='{auth_server.uri}'")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "segtrack-admin-pw")
    trainer_factory(f"mlflow.tracking_uri='{auth_server.uri}'").fit()
    client = MlflowClient(auth_server.uri)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert "mlflow.password" not in run.data.params

    # the same credentials inside the URI (user:password@host), none in the environment
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    with_password = auth_server.uri.replace("http://", "http://admin:{}@")
    with pytest.raises(ConfigError, match="rejected the credentials") as info:
        trainer_factory(f"mlflow.tracking_uri='{with_password.format('wrong-password')}'")
    assert "wrong-password" not in str(info.value) and "admin:***@" in str(info.value)
    good = with_password.format("segtrack-admin-pw")
    trainer_factory(f"mlflow.tracking_uri='{good}'", "run.experiment='uri'").fit()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "segtrack-admin-pw")
    run = only_run(client, "uri")
    assert run.info.status == "FINISHED" and "checkpoints/best.pt" in artifacts(client, run.info.run_id)
    assert logged_settings(client, run.info.run_id)["mlflow"]["tracking_uri"] == auth_server.uri.replace(
        "http://", "http://admin:***@"
    )


def test_a_password_in_the_uri_shows_nowhere(trainer_factory, sqlite_server, tmp_path, capfd, caplog):
    """mlflow's default app does not check credentials: reachable proves the host was parsed right."""
    from segtrack_mlflow.probe import probe_http

    secret = "hun/ter2@pw"  # percent-encoded in the URI: '/' and '@' must not split the host
    uri = sqlite_server.uri.replace("http://", "http://alice:hun%2Fter2%40pw@")
    assert probe_http(uri).outcome == "ok"
    trainer_factory(f"mlflow.tracking_uri='{uri}'", "run.experiment='masked'").fit()
    client = MlflowClient(sqlite_server.uri)
    run = only_run(client, "masked")
    assert run.info.status == "FINISHED" and "unreachable" not in caplog.text
    assert logged_settings(client, run.info.run_id)["mlflow"]["tracking_uri"] == sqlite_server.uri.replace(
        "http://", "http://alice:***@"
    )
    shown = [*run.data.params.values(), *run.data.tags.values(), *capfd.readouterr(), caplog.text]
    files = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "server" not in p.name]
    for encoded in (secret, "hun%2Fter2%40pw"):
        assert not [text for text in shown if encoded in text]
        assert not [data for data in files if encoded.encode() in data]


def test_a_fit_resumed_against_a_server_logs_each_dataset_input_once(trainer_factory, sqlite_server, tmp_path, caplog):
    """The server refused the re-logged inputs once (UNIQUE constraint on inputs): a resumed run adds
    none, and whatever a server refuses is kept and reported, never dropped in silence."""
    from segtrack_mlflow.spool import Spool

    uri, experiment = f"mlflow.tracking_uri='{sqlite_server.uri}'", "run.experiment='resumed-on-server'"
    trainer_factory(uri, experiment, "train.epochs=2").fit()
    trainer_factory(uri, experiment, "train.epochs=4", "export.enabled=true").fit(resume="auto")
    client = MlflowClient(sqlite_server.uri)
    run = only_run(client, "resumed-on-server")
    assert run.info.status == "FINISHED"
    assert sorted(i.tags[0].value for i in run.inputs.dataset_inputs) == ["training", "validation"]
    assert len(client.search_logged_models([run.info.experiment_id])) == 1
    assert epochs_of(client, run.info.run_id, "val_dice") == [1, 2, 3, 4]
    (folder,) = Spool.folders_in(tmp_path / ".segtrack" / "spool")
    assert not (folder / "rejected.jsonl").exists() and "refused" not in caplog.text


class RunsDuringFit:
    """The runs the server holds at each epoch's end."""

    def __init__(self, uri: str):
        self.uri, self.counts = uri, []

    @hookimpl
    def epoch_end(self):
        client = MlflowClient(self.uri)
        self.counts.append(len(client.search_runs([e.experiment_id for e in client.search_experiments()])))


def test_a_loopback_server_gets_nothing_while_a_short_fit_trains_and_everything_after(
    trainer_factory, own_server, capfd
):
    """A server on this machine handles every request beside the training, and the shipper's start
    would take the training's cores: while a short fit trains nothing is sent (the shipper waits on
    a few standard-library imports). The console links the experiment's page at once."""
    experiment = MlflowClient(own_server.uri).create_experiment("segtrack")
    during = RunsDuringFit(own_server.uri)
    trainer_factory(f"mlflow.tracking_uri='{own_server.uri}'", "mlflow.drain_timeout=0", plugins=[during]).fit()
    assert during.counts and set(during.counts) == {0}  # nothing, at every epoch's end
    assert f"experiment 'segtrack': {own_server.uri}/#/experiments/{experiment}\n" in capfd.readouterr().err
    assert segtrack_mlflow.wait_sent(".segtrack/spool", 60)
    run = only_run(MlflowClient(own_server.uri))
    assert run.info.status == "FINISHED" and "val_dice" in run.data.metrics and run.data.params["train.lr"] == "0.01"
