"""What a fit logs through the installed `mlflow` entry point, read back with MlflowClient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

import segtrack_mlflow
from segtrack import PluginHookError, hookimpl, thaw
from testsupport.mlflow_reads import artifacts, epochs_of, expected_params, history, logged_settings, only_run
from testsupport.plugins import RaiseAt


def test_fit_logs_params_tags_metrics_and_artifacts(trainer_factory, sqlite_uri, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / ".secrets.toml").write_text("[default.data]\npath = 'secret-path'\n")
    trainer = trainer_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'", "export.enabled=true", "run.name='unet-a'", "mlflow.log_every_n_steps=1"
    )
    assert "mlflow" in trainer.hooks.plugin_info  # discovered through its entry point
    result = trainer.fit()
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("unet-a-")
    # params: resolved config flattened, secrets (by name or from .secrets.toml) left out
    params = run.data.params
    assert params["train.epochs"] == "3" and params["model.width"] == "4" and params["checkpoint.monitor"] == "val_dice"
    assert "data.path" not in params and "mlflow.password" not in params
    # tags
    tags = run.data.tags
    assert len(tags["test_data_sha256"]) == 64 and tags["segtrack.version"] == "0.1.0"
    assert tags["torch.version"].startswith("2.") and tags["segtrack.device"] == "cpu"
    assert tags["segtrack.world_size"] == "1" and "mlflow=0.1.0" in tags["segtrack.plugins"]
    # every curve at the global step (3 batches an epoch): per-epoch metrics at each epoch's last
    # step, per-step loss at each step, "epoch" at both; best value at the best epoch's step
    for key in ("train_loss", "val_loss", "val_dice", "val_iou", "lr"):
        assert [s for s, _ in history(client, run.info.run_id, key)] == [3, 6, 9], key
    assert [s for s, _ in history(client, run.info.run_id, "train_loss_step")] == list(range(1, 10))
    assert [v for _, v in history(client, run.info.run_id, "epoch")] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert history(client, run.info.run_id, "best_val_dice") == [
        (3 * (result.best_epoch + 1), pytest.approx(result.best_value))
    ]
    assert run.data.tags["segtrack.best_epoch"] == str(result.best_epoch + 1)
    assert float(run.data.tags["segtrack.onnx_max_abs_diff"]) == pytest.approx(result.export.max_abs_diff, rel=1e-2)
    # artifacts: best and last checkpoints, the settings, sample overlays (the model is a LoggedModel)
    assert artifacts(client, run.info.run_id) == [
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "config.toml",
        f"samples/best-epoch-{result.best_epoch + 1}.png",
    ]
    # the uploaded last.pt is the final one, not a superseded one
    local = client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == Path(result.last_checkpoint).read_bytes()


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("best", ["checkpoints/best.pt"]),
        ("none", []),
        (
            "all",
            [
                "checkpoints/best.pt",
                "checkpoints/epoch-0001.pt",
                "checkpoints/epoch-0002.pt",
                "checkpoints/epoch-0003.pt",
                "checkpoints/last.pt",
            ],
        ),
    ],
)
def test_checkpoint_policy(trainer_factory, sqlite_uri, policy, expected):
    trainer_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'",
        f"mlflow.checkpoint_policy='{policy}'",
        "mlflow.sample_overlays=0",
        "checkpoint.keep=5",
    ).fit()
    client = MlflowClient(sqlite_uri)
    assert artifacts(client, only_run(client).info.run_id) == sorted([*expected, "config.toml"])


def test_best_and_last_are_spooled_at_most_once_an_interval_and_the_newest_at_the_end(trainer_factory, sqlite_uri):
    result = trainer_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'", "mlflow.checkpoint_interval=3600", "mlflow.sample_overlays=0"
    ).fit()
    (records,) = Path(".segtrack/spool").glob("*/records.jsonl")
    files = [r for r in map(json.loads, records.read_text().splitlines()) if r["t"] == "file"]
    # epoch 0's pair when it was saved, then the newest pair at fit_end (3 epochs: not 6 files)
    slots = [f["slot"] for f in files if f["a"] == "checkpoints"]
    assert sorted(slots[:2]) == sorted(slots[2:]) == ["best", "last"]
    client = MlflowClient(sqlite_uri)
    run_id = only_run(client).info.run_id
    for name, local in (("last.pt", result.last_checkpoint), ("best.pt", result.best_checkpoint)):
        sent = client.download_artifacts(run_id, f"checkpoints/{name}", f"dl-{name}")
        assert Path(sent).read_bytes() == Path(local).read_bytes(), name


def test_failed_fit_is_marked_failed(trainer_factory, sqlite_uri):
    from segtrack import hookimpl

    class Boom:
        @hookimpl
        def epoch_end(self, epoch):
            raise RuntimeError("boom")

    trainer = trainer_factory(f"mlflow.tracking_uri='{sqlite_uri}'", "plugins.strict=true", plugins=[Boom()])
    with pytest.raises(PluginHookError):
        trainer.fit()
    client = MlflowClient(sqlite_uri)
    assert only_run(client).info.status == "FAILED"


def test_sigterm_marks_the_run_killed(sqlite_uri, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": sqlite_uri, "SEGTRACK_PLUGINS__DISABLED": "['progress']"}
    sets = [
        a
        for s in [
            "train.epochs=500",
            "data.num_samples=16",
            "data.image_size=16",
            "model.width=2",
            "model.depth=1",
            "export.enabled=false",
        ]
        for a in ("--set", s)
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "segtrack", "train", *sets],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not (tmp_path / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0, output
    # the CLI returned without waiting for the send: its shipper process finishes it
    assert segtrack_mlflow.wait_sent(tmp_path / ".segtrack" / "spool", 60)
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    assert run.info.status == "KILLED", output[-2000:]
    assert len(history(client, run.info.run_id, "val_dice")) >= 1


def test_a_short_fit_end_timeout_does_not_cut_the_drain(trainer_factory, sqlite_uri):
    # plugins.fit_end_timeout bounds hung plugins; the tracker drains within mlflow.drain_timeout
    result = trainer_factory(f"mlflow.tracking_uri='{sqlite_uri}'", "plugins.fit_end_timeout=0.01").fit()
    assert result.status == "completed" and not result.plugin_failures
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    assert len(history(client, run.info.run_id, "val_dice")) == 3


def test_a_diverged_fit_is_failed_with_its_reason(trainer_factory, sqlite_uri):
    from segtrack.errors import TrainingDiverged

    trainer = trainer_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'",
        "train.optimizer='sgd'",
        "train.momentum=0.0",
        "train.lr=1e12",
        "train.max_nonfinite=1",
    )
    with pytest.raises(TrainingDiverged):
        trainer.fit()
    run = only_run(MlflowClient(sqlite_uri))
    assert run.info.status == "FAILED" and "the fit diverged" in run.data.tags["segtrack.error"]


def test_cross_validation_logs_a_parent_and_one_child_per_fold(trainer_factory, sqlite_uri):
    result = trainer_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'", "run.name='cvrun'", "checkpoint.monitor='val_dice_1'"
    ).cv(folds=2)
    client = MlflowClient(sqlite_uri)
    parent = only_run(client, filter_string="tags.`segtrack.role` = 'cv-parent'")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["segtrack.fold"] for c in children) == ["1", "2"]  # as the console counts
    cv = result.cv_id[:6]
    assert sorted(c.info.run_name for c in children) == [f"fold1-cvrun-{cv}", f"fold2-cvrun-{cv}"]
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    # the (per-class) monitor's mean and std as metrics; every metric's in the description and cv_summary.json
    assert parent.data.metrics["cv_val_dice_1_mean"] == pytest.approx(result.summary["val_dice_1"]["mean"])
    assert parent.data.metrics["cv_val_dice_1_std"] == pytest.approx(result.summary["val_dice_1"]["std"])
    assert "cv_val_dice_mean" not in parent.data.metrics
    assert parent.data.tags["segtrack.cv_id"] == result.cv_id
    # params are what the CV ran with: 2 folds (data.folds is 3 by default), each fold validating on
    # its own share of the 16 samples (not data.val_fraction = 0.25), the parent on 1/2
    assert parent.data.params["data.folds"] == "2" and parent.data.params["data.val_fraction"] == "0.5"
    for child in children:
        assert child.data.params["data.folds"] == "2"
        assert child.data.params["data.val_fraction"] == "0.5"  # 8 of 16 samples
    # a summary a person reads: per-fold rows and mean ± std on the run page; the monitor per fold is
    # there only (as a curve over folds it read as a trend)
    note = parent.data.tags["mlflow.note.content"]
    assert "| fold | status | best epoch | val_dice_1 |" in note and "| **mean ± std** |" in note
    for fold in result.folds:
        assert f"| {fold.fold + 1} | completed | {fold.best_epoch + 1} | {fold.best_value:.4f} |" in note
    assert f"{result.summary['val_dice']['mean']:.4f} ± {result.summary['val_dice']['std']:.4f}" in note
    assert client.get_metric_history(parent.info.run_id, "cv_val_dice_1") == []


def test_a_fit_after_a_resumed_one_on_the_same_trainer_is_a_run_of_its_own(trainer_factory, sqlite_uri):
    uri = f"mlflow.tracking_uri='{sqlite_uri}'"
    trainer_factory(uri, "train.epochs=2").fit()
    trainer = trainer_factory(uri, "train.epochs=3")
    trainer.fit(resume="auto")  # continues the first run
    trainer.fit()  # a fresh fit: not the resumed run again
    client = MlflowClient(sqlite_uri)
    runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(epochs_of(client, r.info.run_id, "val_dice") for r in runs) == [[1, 2, 3], [1, 2, 3]]


def test_resumed_fit_continues_the_same_run(trainer_factory, sqlite_uri):
    uri = f"mlflow.tracking_uri='{sqlite_uri}'"
    with pytest.raises(KeyboardInterrupt):
        trainer_factory(uri, "train.epochs=4", plugins=[RaiseAt(2, KeyboardInterrupt())]).fit()
    client = MlflowClient(sqlite_uri)
    first = only_run(client)
    assert first.info.status == "KILLED"
    params_before = dict(first.data.params)

    trainer_factory(uri, "train.epochs=4").fit(resume="auto")
    run = only_run(client)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    assert epochs_of(client, run.info.run_id, "val_dice") == [1, 2, 3, 4]
    steps = [s for s, _ in history(client, run.info.run_id, "train_loss_step")]
    assert steps == sorted(set(steps)) == list(range(1, 13))
    assert run.data.params == params_before
    assert run.data.tags["segtrack.resumed_from"].endswith("last.pt")


def test_epoch_logged_before_a_crash_is_not_logged_twice(trainer_factory, sqlite_uri):
    """Crash after epoch 2 was logged but before its last.pt: the resumed fit redoes epoch 2."""
    uri = f"mlflow.tracking_uri='{sqlite_uri}'"
    with pytest.raises(KeyboardInterrupt):
        trainer_factory(
            uri, "train.epochs=4", "train.lr=0.05", plugins=[RaiseAt(2, KeyboardInterrupt(), kind="checkpoint_best")]
        ).fit()
    trainer_factory(uri, "train.epochs=4", "train.lr=0.05").fit(resume="auto")
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    for key in ("train_loss", "val_dice", "lr"):
        assert epochs_of(client, run.info.run_id, key) == [1, 2, 3, 4], key


def test_disabled_plugin_is_not_imported_and_logs_nothing(tmp_path):
    probe = (
        "import sys\nfrom segtrack.cli import main\n"
        "code = main(['train', '--set', 'train.epochs=1', '--set', 'data.num_samples=8', '--set', "
        "'data.image_size=16', '--set', 'model.depth=1', '--set', 'export.enabled=false', '--set', "
        "\"plugins.disabled=['mlflow']\"])\n"
        "print(code, 'segtrack_mlflow.plugin' in sys.modules, 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-3:] == ["0", "False", "False"], out.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()


def test_bad_mlflow_settings_stop_before_training(trainer_factory, tmp_path):
    from segtrack import ConfigError

    with pytest.raises(ConfigError, match="mlflow.checkpoint_policy = 'some' is invalid"):
        trainer_factory("mlflow.checkpoint_policy='some'")
    with pytest.raises(ConfigError, match="mlflow.trackign_uri: unknown setting"):
        trainer_factory("mlflow.trackign_uri='x'")
    with pytest.raises(ConfigError, match="malformed or of an unknown kind"):
        trainer_factory("mlflow.tracking_uri='mlruns'")
    assert not (tmp_path / "checkpoints").exists()


def test_a_user_3d_model_with_a_plugin_metric_is_logged_like_the_builtin_one(settings_factory, sqlite_uri, tmp_path):
    import torch
    from torch import nn

    from segtrack import hookimpl
    from segtrack.loop.trainer import SegmentationTrainer
    from segtrack.plugins.manager import get_plugin_manager

    class VolumeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))

        def forward(self, x):
            return {"out": self.layers(x)}

    class ForegroundShare:
        name = "foreground_share"

        @hookimpl
        def validation_metrics(self, result):
            return {"val_foreground_share": 1.0 - (result.per_class_iou[0] if result.per_class_iou else 0.0)}

    generator = torch.Generator().manual_seed(0)
    volumes = []
    for _ in range(8):
        label = torch.zeros(1, 6, 10, 14)
        label[:, 1:4, 2:6, 3:9] = 1
        label[:, 2:5, 6:9, 8:13] = 2
        volumes.append({"image": label / 2 + 0.1 * torch.randn(label.shape, generator=generator), "label": label})
    settings = settings_factory(
        f"mlflow.tracking_uri='{sqlite_uri}'", "data.dims=3", "data.class_names=['background','liver','tumour']"
    )
    manager = get_plugin_manager(settings, [ForegroundShare()], disabled=["progress", "analytics"])
    result = SegmentationTrainer(settings, model=VolumeNet(), train_data=volumes, plugin_manager=manager).fit()
    assert result.status == "completed"
    client = MlflowClient(sqlite_uri)
    run = only_run(client)
    for key in ("val_dice_liver", "val_iou_tumour", "val_foreground_share"):
        assert epochs_of(client, run.info.run_id, key) == [1, 2, 3], key
    assert f"samples/best-epoch-{result.best_epoch + 1}.png" in artifacts(
        client, run.info.run_id
    )  # a volume's middle slice


def _foreign_database(path: Path, kind: str) -> bytes:
    if kind == "tables":
        import sqlite3

        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")
            db.execute("INSERT INTO patients (name) VALUES ('ada')")
        db.close()
    else:
        path.write_text("name,age\nada,36\n")
    return path.read_bytes()


@pytest.mark.parametrize(
    "kind, why",
    [("tables", "it holds other tables (patients)"), ("csv", "it cannot be read as SQLite (file is not a database)")],
)
def test_an_sqlite_file_that_is_not_an_mlflow_store_is_refused_untouched(trainer_factory, tmp_path, kind, why):
    from segtrack import ConfigError
    from segtrack_mlflow import ExperimentTracker

    before = _foreign_database(tmp_path / "clinic.db", kind)
    message = (
        f"tracking URI 'sqlite:///clinic.db' points at 'clinic.db', which is not an MLflow store: {why}; "
        f"use a new file (e.g. sqlite:///mlflow.db) or an existing MLflow store"
    )
    with pytest.raises(ConfigError) as info:
        trainer_factory("mlflow.tracking_uri='sqlite:///clinic.db'")
    assert str(info.value).startswith(message)
    with pytest.raises(ConfigError, match="not an MLflow store"):
        ExperimentTracker("sqlite:///clinic.db")
    assert (tmp_path / "clinic.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clinic.db"]  # no spool, checkpoint or artifact folder


def test_a_database_password_in_the_uri_is_used_but_never_kept(trainer_factory, postgres_uri, tmp_path, capfd, caplog):
    """The local PostgreSQL trusts every password: this proves where the password goes, not that it is checked."""
    from segtrack_mlflow.shipper import ship
    from segtrack_mlflow.spool import Spool
    from segtrack_mlflow.store import Clients

    secret = "pg-s3cret-pw"
    uri = postgres_uri.replace("postgres@", f"postgres:{secret}@")
    trainer_factory(f"mlflow.tracking_uri='{uri}'", "run.experiment='pg-masked'").fit()
    client = MlflowClient(postgres_uri)
    run = only_run(client, "pg-masked")
    assert run.info.status == "FINISHED" and len(history(client, run.info.run_id, "val_dice")) == 3
    masked = postgres_uri.replace("postgres@", "postgres:***@")
    assert "mlflow.tracking_uri" not in run.data.params  # plumbing: in config.toml, masked
    assert logged_settings(client, run.info.run_id)["mlflow"]["tracking_uri"] == masked
    (folder,) = Spool.folders_in(tmp_path / ".segtrack" / "spool")  # beside the shipper's lock, log and state
    assert Spool(folder, writer=False).meta["tracking_uri"] == masked
    # another process sends a spool it did not write: the masked password is left to the driver
    spool = Spool(folder, writer=False)
    spool.commit(0)
    assert ship(spool, Clients()) > 0
    shown = [*run.data.params.values(), *run.data.tags.values(), *capfd.readouterr(), caplog.text]
    assert not [text for text in shown if secret in text]
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


class Effective:
    """Records what each fit actually ran with: the trainer's settings and its real split sizes."""

    def __init__(self):
        self.fits = []

    @hookimpl
    def fit_start(self, trainer, run):
        self.fits.append((run.fold, thaw(trainer.config), run.num_train, run.num_val))


def test_every_logged_param_is_the_setting_the_fit_and_each_fold_ran_with(trainer_factory, sqlite_uri):
    """train and cv (3 folds where data.folds says 4 and data.val_fraction 0.25): each run's params
    compared key by key with the settings its fit ran with, nothing missing, nothing extra."""
    uri = f"mlflow.tracking_uri='{sqlite_uri}'"
    seen = Effective()
    trainer_factory(uri, "run.name='plain'", "data.folds=4", plugins=[seen]).fit()
    (_, config, num_train, num_val) = seen.fits[0]
    assert num_val / (num_train + num_val) == config["data"]["val_fraction"]  # the plain fit split as set
    client = MlflowClient(sqlite_uri)
    (plain,) = client.search_runs(
        [client.get_experiment_by_name("segtrack").experiment_id], filter_string="attributes.run_name LIKE 'plain%'"
    )
    assert plain.data.params == expected_params(config)

    seen.fits.clear()
    result = trainer_factory(uri, "run.name='cv'", "data.folds=4", "data.num_samples=15", plugins=[seen]).cv(folds=3)
    runs = client.search_runs([plain.info.experiment_id], filter_string="attributes.run_name LIKE '%cv-%'")
    parent = next(r for r in runs if r.data.tags.get("segtrack.role") == "cv-parent")
    by_fold = {int(r.data.tags["segtrack.fold"]): r for r in runs if "segtrack.fold" in r.data.tags}
    assert len(seen.fits) == len(by_fold) == result.num_folds == 3
    for fold, config, num_train, num_val in seen.fits:
        assert config["data"]["folds"] == 4  # the setting; the CV ran 3
        expected = expected_params(config, folds=3, share=num_val / (num_train + num_val))
        expected["run.name"] = f"cv-fold{fold + 1}"  # a fold's name is its own, as the console prints it
        assert by_fold[fold + 1].data.params == expected, fold
    assert parent.data.params == expected_params(seen.fits[0][1], folds=3, share=1 / 3)


class StoreDuringFit:
    """Counts the store's runs at each epoch's end; at ``wait_at`` waits for the send, as a script or
    the analytics plugin does (``segtrack_mlflow.wait_sent``)."""

    def __init__(self, uri: str, wait_at: int | None = None):
        self.path, self.wait_at = uri.removeprefix("sqlite:///"), wait_at
        self.counts: list[int] = []
        self.sent: bool | None = None

    @hookimpl
    def epoch_end(self, epoch):
        import sqlite3

        if epoch.epoch == self.wait_at:
            self.sent = segtrack_mlflow.wait_sent(".segtrack/spool", 60)
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True) as con:
            self.counts.append(con.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_a_database_store_gets_nothing_while_a_short_fit_trains_and_everything_after(trainer_factory, sqlite_uri):
    """The shipper's first send (MLflow's import, the store opened: ~2 s of CPU) waits while the fit
    trains (mlflow.quiet_start): the training has the cores. The fit's end, or anyone waiting
    for the send, ends the wait."""
    quiet = StoreDuringFit(sqlite_uri)
    trainer_factory(f"mlflow.tracking_uri='{sqlite_uri}'", "mlflow.drain_timeout=0", plugins=[quiet]).fit()
    assert quiet.counts == [0, 0, 0]  # nothing sent while it trained
    assert segtrack_mlflow.wait_sent(".segtrack/spool", 60)
    assert only_run(MlflowClient(sqlite_uri)).info.status == "FINISHED"  # everything, once it ended

    waiting = StoreDuringFit(sqlite_uri, wait_at=1)
    trainer_factory(f"mlflow.tracking_uri='{sqlite_uri}'", "mlflow.drain_timeout=0", plugins=[waiting]).fit()
    # someone waited at the second epoch's end: sent from then on (the first shipper may still have run)
    assert waiting.sent is True and waiting.counts[1:] == [2, 2]
