"""The ``mlflow`` plugin: every hook appends to a local spool and returns; the shipper, a process
of its own (shipper_process.py), sends the spool to MLflow. Nothing here waits on the network, and
no sending shares the training process."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import segtrack_mlflow
from segtrack import ConfigError, hookimpl, thaw
from segtrack_mlflow import store
from segtrack_mlflow.datasets import dataset_entries, fingerprint_tags, fingerprints_known, validation_dataset
from segtrack_mlflow.entries import CreateRun, DatasetInputs, LoggedModel, Params, Status, Tags
from segtrack_mlflow.gitinfo import source_tags
from segtrack_mlflow.settings import SCHEMA, experiment_of, mlflow_section
from segtrack_mlflow.spool import Spool, SpoolCorrupt, read_meta
from segtrack_mlflow.study_summary import TrialRow
from segtrack_mlflow.uri import (
    absolute_uri,
    is_remote,
    local_artifact_root,
    redact,
    resolve_tracking_uri,
    sends_from_this_machine,
    split_credentials,
)

log = logging.getLogger("segtrack.mlflow")
STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MIN_SPOOL_FREE_BYTES = 16 * 2**20
NEW_STORE_WAIT_S = 60.0  # the first fit into a new SQLite file waits (at most) until it is created and sent
LINK_WAIT_S = 3.0  # how long a trial's links wait for the shipper to create its run (then: name only)
FIT_END_MARGIN_S = 30.0  # fit_end's work besides draining: status record, overlay PNGs, staging files
SEARCHED = "searched"  # the study parent's value of a key its trials sample
# the best epoch's validation metrics every fit records as best_<key> (and its LoggedModel carries)
BEST_KEYS = ("val_dice", "val_iou", "val_loss")
CHECKPOINT_KINDS = {
    "best+last": ("best", "last"),
    "best": ("best",),
    "last": ("last",),
    "all": ("best", "last", "epoch"),
    "none": (),
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _masked(values) -> dict:
    """Sampled values as shown: a URL's password masked, as in every param."""
    return {key: redact(value) if isinstance(value, str) else value for key, value in values.items()}


def console(line: str) -> None:
    """A line for the person at the terminal (stderr, beside segtrack's own progress lines)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class MlflowPlugin:
    """One instance per trainer (the entry point names this class)."""

    def __init__(self):
        self.section: dict = {}
        self.tracking_uri = ""  # as shown and spooled: password masked
        self._uri = ""  # as given: handed to MLflow, never printed nor written
        self.experiment = ""
        self._experiment_id: str | None = None  # on a server, when the experiment exists before the fit
        self.secret_keys: frozenset[str] = frozenset()
        self.spool: Spool | None = None
        self.parent: Spool | None = None
        self.parent_cv_id: str | None = None
        self.study: Spool | None = None  # a study's parent run (run_study: one per process)
        self.study_id: str | None = None
        self._trial_run: tuple[int, Spool] | None = None  # the run of the trial running now
        self._trial_spools: list[Spool] = []  # the runs of this study's trials, ended
        self._study_name, self._objective, self._direction = "", "", ""
        # the trials this process ended, by number, with their spool folder: the study parent's description lists them
        self._trials: dict[int, tuple[TrialRow, Path]] = {}
        self._study_best: tuple[int, float] | None = None  # (number, value), across every process
        self.resume_state: dict | None = None
        self._link = None  # to the shipper process (shipper_link.py), made on the first run
        self._every = 0  # mlflow.log_every_n_steps, set at fit_start
        self._last_samples = ()
        self._best_samples = ()
        self._example = None  # one validation image (1, C, *spatial): the LoggedModel's input example
        self._exported = False
        self._sampler = None  # the system metrics process of the fit running now
        self._dims = 2
        self._datasets_pending = False  # inputs and hash tags wait for the first epoch's SHA256s
        # the best epoch so far: {"epoch", "step", "ts", "metrics"}; its validation metrics are logged
        # as best_<key> at its step, and the LoggedModel carries them
        self._best: dict | None = None
        # a local SQLite store this fit creates: its first fit waits until the shipper made it
        # (MLflow's first migration fails beside a reader the user opens at the same moment)
        self._new_store = False
        self._val_dataset: tuple[str, str] | None = None
        self._last_wake = 0.0  # when the shipper was last woken (time.monotonic)
        # best/last checkpoints: when each slot was last spooled, and the newest one waiting
        self._checkpoint_spooled: dict[str, float] = {}
        self._checkpoint_waiting: dict[str, str] = {}
        self._link_pending: Spool | None = None  # a run whose UI address is printed once its id is known
        self._trial_status: str | None = None  # the status the trial's fit (or CV) ended with

    @property
    def fit_end_timeout(self) -> float:
        """fit_end drains within mlflow.drain_timeout, then reports what is left: the core's
        plugins.fit_end_timeout (meant for hung plugins) must not cut that short."""
        return self._drain_wait_s + FIT_END_MARGIN_S

    @property
    def _drain_wait_s(self) -> float:
        """How long the next fit_end waits for its run to be sent: mlflow.drain_timeout, and at
        least NEW_STORE_WAIT_S for the first fit into a new SQLite store."""
        return max(self.section.get("drain_timeout", 0), NEW_STORE_WAIT_S if self._new_store else 0)

    def _best_at(self, epoch: int) -> dict | None:
        """The recorded best point when it is ``epoch``'s (a checkpoint from before it has none)."""
        return self._best if self._best and self._best["epoch"] == epoch else None

    # -- settings and CLI -----------------------------------------------------------------------

    @hookimpl
    def settings_schema(self):
        return SCHEMA

    @hookimpl
    def settings_loaded(self, settings):
        from segtrack import secret_keys

        # checked and filled in by segtrack with the schema above; mlflow_section() only if that failed
        self.section = thaw(settings["mlflow"]) if "mlflow" in settings else mlflow_section(settings)
        if not self.section["telemetry"]:  # no outside connection unless the user asks for one
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        elif segtrack_mlflow.TELEMETRY_OFF_BY_US:  # asked for: lift the switch set on import
            os.environ.pop("MLFLOW_DISABLE_TELEMETRY", None)
        self._uri = resolve_tracking_uri(None, settings)
        self.tracking_uri = redact(self._uri)
        self.experiment = experiment_of(settings)
        self.secret_keys = secret_keys() | {s.key for s in SCHEMA if s.secret}
        store.use_credentials(self.section["username"], self.section["password"])
        if os.environ.get("RANK", "0") == "0":
            store.check_sqlite_store(self._uri)
            store.check_sqlite_writable(self._uri)
            self._new_store = store.is_new_sqlite_store(self._uri)
            self._check_spool_dir()
            if is_remote(self._uri):
                self._check_server()

    def _check_spool_dir(self) -> None:
        """The spool must be writable with room to spare: a spool that cannot be written loses data."""
        import shutil

        folder = Path(self.section["spool_dir"])
        existing = store.nearest_existing(folder)
        free = shutil.disk_usage(existing).free
        if not os.access(existing, os.W_OK):
            raise ConfigError(
                f"mlflow.spool_dir = {str(folder)!r} is not writable: choose a writable folder "
                f"(every logged point is written there before it is sent)"
            )
        if free < MIN_SPOOL_FREE_BYTES:
            raise ConfigError(
                f"mlflow.spool_dir = {str(folder)!r} has {free // 1024} KiB free, below the "
                f"{MIN_SPOOL_FREE_BYTES // 2**20} MiB needed to log safely: free space there or set "
                f"mlflow.spool_dir to a folder on a disk with room"
            )

    def _check_server(self) -> None:
        from segtrack_mlflow.probe import probe_http

        outcome, self._experiment_id = probe_http(
            self._uri, timeout=min(5.0, self.section["request_timeout"]), experiment=self.experiment
        )
        shown = self.tracking_uri
        if outcome == "unauthorized":
            raise ConfigError(
                f"MLflow server {shown} rejected the credentials: set MLFLOW_TRACKING_USERNAME and "
                f"MLFLOW_TRACKING_PASSWORD (or mlflow.username and mlflow.password in configs/.secrets.toml, "
                f"or user:password@ in the tracking URI)"
            )
        if outcome != "ok":
            if self.section["offline"] == "fail":
                raise ConfigError(
                    f'MLflow server {shown} is {outcome} and mlflow.offline = "fail": start the server, fix '
                    f'the tracking URI, or set mlflow.offline = "auto" to spool and send later'
                )
            log.warning(
                "MLflow server %s is %s: logging to the local spool; it is sent when the server is back (by this "
                "fit's shipper while it waits, else run `segtrack mlflow sync` once the server is up)",
                shown,
                outcome,
            )

    @hookimpl
    def cli_commands(self, subparsers):
        from segtrack_mlflow.cli import add_commands

        add_commands(subparsers)

    # -- runs -----------------------------------------------------------------------------------

    def _send(self, spool: Spool, urgent: bool = True, waited_for: bool = False) -> None:
        """Make what ``spool`` holds durable and have the shipper send it now; not ``urgent`` (an
        epoch's points): at most one wake-up per ``mlflow.flush_interval``, the shipper's own round
        sends the rest (short epochs made a round, and requests to the server, per epoch).
        ``waited_for``: the caller waits for the send (it ends a shipper's quiet start)."""
        from segtrack_mlflow.shipper_link import ShipperLink

        spool.sync()
        if self._link is None:
            store.configure_http(self.section["request_timeout"])  # the shipper inherits the environment
            self._link = ShipperLink(
                Path(self.section["spool_dir"]),
                absolute_uri(self._uri),
                self.section["flush_interval"],
                self.section["shipper_linger"],
                # a remote server's sender is a small HTTP client: it sends from the first epoch
                self.section["quiet_start"] if sends_from_this_machine(self._uri) else 0.0,
            )
        now = time.monotonic()
        if urgent or now - self._last_wake >= self.section["flush_interval"]:
            self._last_wake = now
            self._link.wake(now=waited_for)

    def _new_spool(
        self, run_name: str, tags: dict, parent: Spool | None, run_id: str | None = None, continues: str | None = None
    ) -> Spool:
        """A spool in this machine's spool folder for a new run, for one that exists (``run_id``), or
        for the run another spool created or will create (``continues``: that spool's local id)."""
        root = Path(self.section["spool_dir"]).resolve()
        parent_id = parent.local_id if parent else None
        uri = absolute_uri(self._uri)  # fixed now: the shipper may send after the caller changed folder
        spool = Spool.create(
            root,
            {
                "tracking_uri": redact(uri),
                "experiment": self.experiment,
                "run_name": run_name,
                "parent": parent_id,
                **({"continues": continues} if continues else {}),
            },
        )
        if run_id is not None:
            spool.set_run_id(run_id)
            return spool
        spool.add(CreateRun(self.experiment, run_name, tags, parent_id, _now_ms(), local_artifact_root(uri)))
        return spool

    def _hyperparameters(self, config, own_name: str, searched=()) -> tuple[dict[str, str], dict[str, str]]:
        """(params, overflow) of ``config``: ``run.name`` is the run's own (a fold's, a trial's),
        and a key a study searches is ``searched`` on the study's parent (no trial used its base value)."""
        from segtrack_mlflow.params import to_params

        params, overflow = to_params(thaw(config), self.secret_keys, drop_plumbing=True)
        params["run.name"] = own_name
        params.update({key: SEARCHED for key in searched if key in params})
        return params, overflow

    def _log_settings(self, spool: Spool, config, own_name: str, searched=()) -> None:
        """Hyperparameters as params; every resolved setting (plumbing too) in config.toml."""
        from segtrack_mlflow.params import to_toml

        plain = thaw(config)
        params, overflow = self._hyperparameters(config, own_name, searched)
        spool.add(Params(params))
        staged = {
            **{f"{key}.txt": (text, "params") for key, text in overflow.items()},
            "config.toml": (to_toml(plain, self.secret_keys), None),
        }
        for name, (text, folder) in staged.items():
            path = spool.folder / "files" / name
            path.write_text(text)
            spool.add_file(path, folder)
            path.unlink()

    def _run_name(self, base: str, cv_id: str | None = None, fold: int | None = None) -> str:
        """Readable and unique per fit (mlflow.run_name_suffix = "id"): <name>-<id>, the CV parent
        <name>-<cv id>-cv, its folds fold<k>-<name>-<cv id> with k counted from 1 as the console
        counts (the fold first: the runs table's name column cuts long names from the right)."""
        unique = self.section["run_name_suffix"] == "id"
        if cv_id is None:
            return f"{base}-{uuid.uuid4().hex[:6]}" if unique else base
        suffix = f"-{cv_id[:6]}" if unique else ""
        return f"{base}{suffix}-cv" if fold is None else f"fold{fold + 1}-{base}{suffix}"

    # tryfirst: the run must exist before any other plugin can fail (under plugins.strict a failure
    # in another plugin's hook stops the fit, and that run is then recorded as FAILED)
    @hookimpl(tryfirst=True)
    def cross_validation_start(self, info):
        tags = {
            **source_tags(),
            "segtrack.cv_id": info.cv_id,
            "segtrack.num_folds": str(info.num_folds),
            "segtrack.role": "cv-parent",
        }
        in_study = self._in_study(info.study_id, info.trial)
        if in_study:
            tags.update(self._trial_tags(info.trial))
        self.parent = self._new_spool(self._run_name(info.run_name, info.cv_id), tags, self.study if in_study else None)
        self.parent_cv_id = info.cv_id
        if in_study:
            self._trial_run = (info.trial, self.parent)
        self._log_settings(self.parent, info.config, info.run_name)
        self._send(self.parent)
        self._announce(self.parent, f"cross-validation {info.cv_id} logs to parent run", link_later=False)

    @hookimpl(tryfirst=True)  # see cross_validation_start
    def fit_start(self, run):
        import torch

        tags = {
            **source_tags(),
            "segtrack.version": run.segtrack_version,
            "torch.version": torch.__version__,
            "segtrack.plugins": ",".join(f"{n}={v}" for n, v in run.plugins),
            "segtrack.device": run.device,
            "segtrack.world_size": str(run.world_size),
            **fingerprint_tags(run),
            "segtrack.num_parameters": str(run.num_parameters),
            "segtrack.data_source": run.data_source,
            "segtrack.model": run.model_name,
            "segtrack.loop": run.loop,  # segtrack's trainer, a loop of one's own, lightning or ignite
            "segtrack.inferer": run.inferer or "unknown",  # what computed the validation logits
            "segtrack.fit_id": run.fit_id,  # this fit (a resumed fit sets its own)
            "segtrack.spatial_dims": str(run.spatial_dims),  # 2D and 3D fits told apart in the runs table
        }
        if run.fold is not None:
            tags.update(
                {
                    "segtrack.fold": str(run.fold + 1),  # counted from 1, as the run name and console
                    "segtrack.num_folds": str(run.num_folds),
                    "segtrack.cv_id": run.cv_id or "",
                }
            )
        self._exported, self._example = False, None
        self._checkpoint_spooled, self._checkpoint_waiting = {}, {}
        # this fit's restored state only: a later fit of the same trainer (a CV after it) starts its own run
        resume_state, self.resume_state = self.resume_state, None
        self._best = (resume_state or {}).get("best")
        self._val_dataset = validation_dataset(run)
        self.spool = self._resumed_spool(resume_state, run.run_name) if resume_state else None
        resumed = self.spool is not None
        if resumed:
            # resumed: the same run; params, datasets and steps already spooled are not repeated
            self.spool.add(Status("RUNNING", _now_ms()))
            if not run.cv_id and self._in_study(run.study_id, run.trial):  # a retried trial continues its run
                tags.update(self._trial_tags(run.trial))
                self._trial_run = (run.trial, self.spool)
            self.spool.add(Tags({**tags, "segtrack.resumed_from": run.resumed_from or ""}))
        else:
            in_cv = bool(run.cv_id and run.cv_id == self.parent_cv_id)
            trial_fit = not in_cv and self._in_study(run.study_id, run.trial)
            parent = self.parent if in_cv else (self.study if trial_fit else None)
            if self._in_study(run.study_id, run.trial):  # a trial's run, or a fold of a CV trial
                tags.update(self._trial_tags(run.trial))
            base = run.config["run"]["name"]
            name = self._run_name(base, run.cv_id, run.fold) if run.cv_id else self._run_name(run.run_name)
            self.spool = self._new_spool(name, tags, parent)
            if trial_fit:
                self._trial_run = (run.trial, self.spool)
            self._log_settings(self.spool, run.config, run.run_name)
            if fingerprints_known(run):
                self.spool.add(DatasetInputs(dataset_entries(run)))
        # a resumed run logged its inputs when it began (hashes made at its epoch 0 never change)
        self._datasets_pending = not resumed and not fingerprints_known(run)
        self._every = self._step_interval(run)
        self._dims = run.spatial_dims
        self._send(self.spool)
        self._announce(self.spool, "continues run" if resumed else "logs to run")
        if self.section["system_metrics"]:
            from segtrack_mlflow.system_metrics import SystemSampler

            interval = self.section["system_metrics_interval"]
            self._sampler = SystemSampler(self.spool.folder, interval, Path(self.section["spool_dir"]).resolve())

    # -- console: from what a person reads to the MLflow UI --------------------------------------

    def _announce(self, spool: Spool, what: str, link_later: bool = True) -> None:
        """One line naming the MLflow run as the UI shows it: for a local store how to browse it; for
        a server its experiment's page (when the experiment exists), then the run's own page once
        the shipper has created the run (``_print_link``: during the first epoch, or after a quiet
        start on a server of this machine, which creates it when the fit ends or after 30 s)."""
        where = f"experiment {self.experiment!r} at {self.tracking_uri}"
        if not is_remote(self._uri):
            where += f" (browse: mlflow ui --backend-store-uri {self.tracking_uri})"
        elif self._experiment_id:  # its page lists the run once sent (a quiet start sends it at the fit's end)
            where = f"experiment {self.experiment!r}: {self._server_page()}/#/experiments/{self._experiment_id}"
        console(f"mlflow: {what} {spool.meta['run_name']!r}, {where}")
        self._link_pending = spool if link_later and is_remote(self._uri) else None
        self._print_link()

    def _print_link(self) -> None:
        """The run's page in the MLflow UI, once (its id comes from the shipper: no waiting here)."""
        spool = self._link_pending
        if spool is None:
            return
        meta = read_meta(spool.folder)
        if meta.get("run_id") and meta.get("experiment_id"):
            self._link_pending = None
            page = f"{self._server_page()}/#/experiments/{meta['experiment_id']}/runs/{meta['run_id']}"
            console(f"mlflow: run {meta['run_name']!r}: {page}")

    def _server_page(self) -> str:
        return split_credentials(self.tracking_uri)[0].rstrip("/")  # a link to click: no user in it

    def _stop_system_metrics(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()  # it takes a last reading first
            self._sampler = None

    def _resumed_spool(self, state: dict, run_name: str) -> Spool | None:
        """The spool to continue a resumed run in. The run's own spool when it lies in this
        machine's spool folder; else (the fit moved to another node or folder: that spool is not
        this process's to write) a new local spool continuing the same MLflow run by its id."""
        folder = Path(state["spool"])
        root = Path(self.section["spool_dir"]).resolve()
        if folder.parent == root and state.get("host", socket.gethostname()) == socket.gethostname():
            return self._reopen(folder)
        log.info("continuing the MLflow run of spool %s (elsewhere) in a new spool on this machine", folder)
        if state.get("run_id"):
            return self._new_spool(run_name, {}, None, run_id=state["run_id"])
        # its run was not created when the checkpoint was written: found by the first spool's id when sent
        return self._new_spool(run_name, {}, None, continues=state["local_id"])

    def _reopen(self, folder: Path) -> Spool | None:
        """The resumed run's spool; None (a new run, said why) when it is gone or unreadable."""
        if not (folder / "meta.json").is_file():
            log.warning("spool %s of the resumed run is gone: logging into a new MLflow run", folder)
            return None
        try:
            return Spool(folder)
        except SpoolCorrupt as exc:
            log.warning("%s; meanwhile this fit logs into a new MLflow run", exc)
            return None

    # one step convention, as Lightning's: every curve's step is the global training step
    # (batches since the fit began, counting resumed ones): per-step train_loss_step every
    # log_every_n_steps, the epoch's metrics at the epoch's last step, and "epoch" (counted from 1)
    # at both, so MLflow can also draw any curve against it. The summary best_<monitor> is one
    # point at the best epoch's step; best epoch and ONNX parity are tags (no one-bar panels)

    def _step_interval(self, run) -> int:
        """mlflow.log_every_n_steps, or 0 (no per-step curve) for a fit too short to draw one: under
        two points it would be a one-dot panel beside the epoch curves."""
        every = self.section["log_every_n_steps"]
        planned = run.batches_per_epoch * run.max_epochs  # 0 when a loader or loop does not say
        return 0 if every and planned and planned < 2 * every else every

    @hookimpl
    def train_batch_end(self, step):
        if (
            self._every
            and step.global_step % self._every == 0
            and step.global_step > self.spool.max_step("train_loss_step")
        ):
            now = _now_ms()
            self.spool.metric("train_loss_step", step.loss, step.global_step, now)
            self.spool.metric("epoch", step.epoch + 1, step.global_step, now)

    @hookimpl
    def validation_end(self, result):
        self._last_samples = result.samples[: self.section["sample_overlays"]]
        if result.samples and self._example is None:  # a centre crop of <= 64 per axis: kilobytes, not megabytes
            image = result.samples[0].image
            crop = tuple(slice(max(0, (n - 64) // 2), max(0, (n - 64) // 2) + min(n, 64)) for n in image.shape[1:])
            self._example = image[(slice(None), *crop)][None].astype("float32")

    @hookimpl
    def epoch_end(self, run, epoch):
        if self._datasets_pending and fingerprints_known(run):  # kind "loaded": known after epoch 0
            self.spool.add(Tags(fingerprint_tags(run)))
            self.spool.add(DatasetInputs(dataset_entries(run)))
            self._datasets_pending = False
        if self._val_dataset is None:  # kind "loaded" (a resumed fit's too): known after its first epoch
            self._val_dataset = validation_dataset(run)
        now, step = _now_ms(), epoch.global_step
        for key, value in {**epoch.metrics, "epoch": epoch.epoch + 1}.items():
            if step > self.spool.max_step(key):
                self.spool.metric(key, value, step, now)
        if epoch.is_best:
            self._best_samples = self._last_samples
            self._best = {"epoch": epoch.epoch, "step": step, "ts": now, "metrics": dict(epoch.metrics)}
        self._send(self.spool, urgent=False)
        self._link.report()
        self._print_link()

    @hookimpl
    def checkpoint_saved(self, checkpoint):
        """best.pt and last.pt go to the spool at most every ``mlflow.checkpoint_interval`` seconds
        (and the newest at fit_end): each upload is work for the shipper and the server, which
        competes with training for the CPU; per-epoch files (policy "all") go every time."""
        if checkpoint.kind not in CHECKPOINT_KINDS[self.section["checkpoint_policy"]]:
            return
        if checkpoint.kind == "epoch":
            self.spool.add_file(checkpoint.path, "checkpoints")
            return
        now, slot = time.monotonic(), checkpoint.kind
        if now - self._checkpoint_spooled.get(slot, -float("inf")) >= self.section["checkpoint_interval"]:
            self.spool.add_file(checkpoint.path, "checkpoints", slot=slot)
            self._checkpoint_spooled[slot] = now
            self._checkpoint_waiting.pop(slot, None)
        else:
            self._checkpoint_waiting[slot] = checkpoint.path

    def _spool_waiting_checkpoints(self, spool: Spool) -> None:
        """The newest best/last checkpoints not spooled yet (their files hold the newest content)."""
        waiting, self._checkpoint_waiting = self._checkpoint_waiting, {}
        for slot, path in waiting.items():
            if Path(path).is_file():
                spool.add_file(path, "checkpoints", slot=slot)

    @hookimpl
    def model_exported(self, run, export):
        """The ONNX export as an MLflow LoggedModel (a pyfunc predicting as ``segtrack predict`` does,
        the ONNX flavour, signature, input example), built by the shipper from what is staged here."""
        from segtrack_mlflow.logged_model import stage_model_source

        folder = self.spool.staging_folder() / "model"
        run_name = self.spool.meta["run_name"]  # the MLflow run's name, unique per fit
        metadata = {
            "segtrack.run_name": run_name,
            "segtrack.best_epoch": export.epoch + 1,
            "segtrack.opset": export.opset,
            "spatial_dims": self._dims,
            "segtrack.onnx_max_abs_diff": export.max_abs_diff,
        }
        stage_model_source(export.path, folder, self._example, metadata)
        best = self._best_at(export.epoch)
        # a model whose ONNX outputs drift past the tolerance is logged, but marked where people look
        parity = (
            "ok"
            if export.parity_ok
            else (
                f"above tolerance: max abs diff {export.max_abs_diff:.3g} > {export.tolerance:.3g} x logit scale "
                f"{max(1.0, export.logit_scale):.3g}"
            )
        )
        self.spool.add(
            LoggedModel(
                key="model",
                name=run_name,
                path=str(folder.relative_to(self.spool.folder)),
                step=best["step"] if best else 0,
                register=self.section["register_model"] or None,
                params={
                    **self._model_params(run),
                    "opset": str(export.opset),
                    "source": Path(export.path).name,
                    "best_epoch": str(export.epoch + 1),
                    "onnx_max_abs_diff": f"{export.max_abs_diff:.3g}",
                },
                tags={"segtrack.onnx_parity": parity},
            )
        )
        self.spool.add(
            Tags({"segtrack.onnx_max_abs_diff": f"{export.max_abs_diff:.3g}", "segtrack.onnx_parity": parity})
        )
        self._exported = True  # its metrics are the best_* points fit_end logs

    def _model_params(self, run) -> dict[str, str]:
        """What made the model, on its page and as Models-tab columns: the fit's hyperparameters,
        and where it belongs (study, trial, cross-validation, fold)."""
        params, _ = self._hyperparameters(run.config, run.run_name)
        context = {
            "study": self._study_name if self._in_study(run.study_id, run.trial) else None,
            "trial": run.trial if self._in_study(run.study_id, run.trial) else None,
            "cv_id": run.cv_id,
            "fold": run.fold + 1 if run.fold is not None else None,
            "val_data": self._val_dataset[0] if self._val_dataset else None,
        }
        return {**params, **{f"segtrack.{k}": str(v) for k, v in context.items() if v is not None}}

    @hookimpl
    def fit_end(self, result):
        self._stop_system_metrics()
        spool = self.spool
        if spool is None:
            return
        model = "model" if self._exported else None
        if result.best_epoch >= 0:
            self._log_best(spool, result, model)
            spool.add(Tags({"segtrack.best_epoch": str(result.best_epoch + 1)}))
        if self._best_samples:
            from segtrack_mlflow.overlays import write_overlays

            path = write_overlays(
                self._best_samples, spool.folder / "files" / f"best-epoch-{result.best_epoch + 1}.png"
            )
            spool.add_file(path, "samples")
            path.unlink()
        self._spool_waiting_checkpoints(spool)
        if result.error:  # why the run failed, readable in the run's page and searchable
            spool.add(Tags({"segtrack.error": result.error[:5000]}))
        self._end_run(spool, STATUS.get(result.status, "FAILED"))
        self._send(spool)
        self._drain(spool)
        self._print_link()
        if model and self.section["register_model"]:
            self._report_registration(spool)

    def _end_run(self, spool: Spool, status: str) -> None:
        """The run's final status, and the spool closed (the shipper exits once it has sent it). A
        trial's run ends at trial_end instead, with its state and value: a run tagged after it
        ended reads as unfinished to whoever copied it when it ended (the analytics cache)."""
        if self._trial_run and self._trial_run[1] is spool:
            self._trial_status = status
            return
        spool.add(Status(status, _now_ms()))
        spool.close()

    def _report_registration(self, spool: Spool) -> None:
        from segtrack_mlflow.logged_model import REGISTRY_ALIAS

        name, registered = self.section["register_model"], read_meta(spool.folder).get("registered")
        if registered:
            console(f"mlflow: registered model {name!r} version {registered['version']} (alias {REGISTRY_ALIAS!r})")
        else:
            console(f"mlflow: the model becomes a version of registered model {name!r} once the shipper has sent it")

    def _log_best(self, spool: Spool, result, model: str | None) -> None:
        """The best epoch's validation metrics as ``best_<key>`` (the monitor's and the main ones),
        one point each at that epoch's step; the LoggedModel carries the same keys, so a run's
        latest value beside the model's name is the model's own (its val_* curves end elsewhere)."""
        best = self._best_at(result.best_epoch)
        step = best["step"] if best else 0
        values = {key: best["metrics"][key] for key in BEST_KEYS if best and key in best["metrics"]}
        values[result.monitor] = result.best_value
        for key, value in values.items():
            spool.metric(f"best_{key}", value, step, model=model)

    @hookimpl
    def cross_validation_end(self, result):
        """The parent reads as a summary: a description with one row per fold and the mean ± std
        (``mlflow.note.content``), the monitor's mean and std across folds as metrics
        (``cv_<monitor>_mean``/``_std``, at step 0), every metric's in the artifact cv_summary.json.
        The folds' values are in the description only: as a curve over folds they read as a trend."""
        import json

        from segtrack_mlflow.cv_summary import describe

        if self.parent is None:
            return
        monitor = next((f.monitor for f in result.folds), None)
        now = _now_ms()
        for stat, value in thaw(result.summary).get(monitor, {}).items():
            if stat in ("mean", "std"):
                self.parent.metric(f"cv_{monitor}_{stat}", value, 0, now)
        self.parent.add(Tags({"mlflow.note.content": describe(result, monitor)}))
        table = {
            "monitor": monitor,
            "summary": thaw(result.summary),
            "folds": [
                {"fold": f.fold + 1, "status": f.status, "best_epoch": f.best_epoch + 1, "best_value": f.best_value}
                for f in result.folds
            ],
        }
        path = self.parent.folder / "files" / "cv_summary.json"
        path.write_text(json.dumps(table, indent=2))
        self.parent.add_file(path, None)
        path.unlink()
        # every fold ran (or the last one that ran stopped them all, as a pruned trial does) and none failed
        ran = len(result.folds) == result.num_folds or (result.folds and result.folds[-1].status == "stopped")
        ok = bool(ran) and all(f.status in ("completed", "stopped") for f in result.folds)
        self._end_run(self.parent, "FINISHED" if ok else "FAILED")
        self._send(self.parent)
        self._drain(self.parent)
        self.parent, self.parent_cv_id = None, None

    # -- studies: a parent run per process, one nested run per trial (a CV trial's folds below it) --

    def _in_study(self, study_id: str | None, trial: int | None) -> bool:
        return study_id is not None and trial is not None and study_id == self.study_id and self.study is not None

    def _trial_tags(self, number: int | None) -> dict[str, str]:
        return {
            "segtrack.study": self._study_name,
            "segtrack.study_id": self.study_id or "",
            "segtrack.trial": str(number),
        }

    @hookimpl(tryfirst=True)
    def study_start(self, study):
        """The study's parent run: its base settings as params, the search (space, sampler,
        pruner, storage, objective) as ``study.*`` params."""
        import json

        self.study_id, self._study_name, self._objective = study.study_id, study.study_name, study.objective
        self._direction, self._trials, self._study_best = study.direction, {}, None
        tags = {
            **source_tags(),
            "segtrack.role": "study-parent",
            "segtrack.study": study.study_name,
            "segtrack.study_id": study.study_id,
        }
        self.study = self._new_spool(self._run_name(f"{study.study_name}-study"), tags, None)
        self._log_settings(self.study, study.config, f"{study.study_name}-study", searched=study.space)
        described = {
            "study.name": study.study_name,
            "study.objective": study.objective,
            "study.direction": study.direction,
            "study.folds": str(study.folds or ""),
            # a space may list URLs: their passwords are masked, as in every other param
            **{f"study.{key}": redact(str(value)) for key, value in study.attributes.items()},
            **{f"study.space.{key}": redact(json.dumps(thaw(value))) for key, value in study.space.items()},
        }
        self.study.add(Params(described))
        self._send(self.study)
        self._announce(self.study, f"study {study.study_name!r} logs to parent run", link_later=False)

    @hookimpl
    def trial_end(self, trial):
        """The trial's run gets its state (``segtrack.trial_state``: completed, pruned, failed) and
        value (``trial_value``); the parent the study's best so far (``study_best_<objective>``, step =
        trial number: not ``best_*``, which name a fit's own), the best trial's number as the tag
        ``segtrack.best_trial`` and a description with the trial table (values per trial are no curve)."""
        if self.study is None or trial.study_id != self.study_id:
            return
        ran = self._trial_run if self._trial_run and self._trial_run[0] == trial.number else None
        self._trial_run = None
        spool = ran[1] if ran else self._failed_trial_run(trial)
        tags = {
            "segtrack.trial": str(trial.number),  # a retry's number, on the run it continues
            "segtrack.trial_state": trial.state,
            "segtrack.sampled": ",".join(trial.params),
        }
        if trial.retry_of is not None:
            tags["segtrack.retry_of"] = str(trial.retry_of)
        if trial.value is not None:  # the value the study records (a pruned trial's may not be its best)
            tags["segtrack.trial_value"] = repr(trial.value)
            # one numeric column every trial run shares, whatever the objective: the runs table sorts on it
            spool.metric("trial_value", trial.value, 0, _now_ms())
        if trial.error:
            tags["segtrack.error"] = trial.error[:5000]
        spool.add(Tags(tags))
        status, self._trial_status = self._trial_status, None
        if trial.state == "failed":  # a preempted trial stays KILLED, as its fit ended it
            status = "KILLED" if trial.interrupted or status == "KILLED" else "FAILED"
        spool.add(Status(status or "FINISHED", _now_ms()))
        spool.close()
        self._trial_spools.append(spool)  # study_end's drain waits for them too
        sampled, name = _masked(trial.params), spool.meta["run_name"]
        row = TrialRow(trial.number, trial.state, trial.value, sampled, name, spool.run_id)
        self._trials[trial.number] = (row, spool.folder)
        if trial.best_number is not None and trial.best_value is not None:
            self._study_best = (trial.best_number, trial.best_value)
            self.study.metric(f"study_best_{self._objective}", trial.best_value, trial.number, _now_ms())
        self._describe_study(self.study)
        self._send(self.study)

    def _describe_study(self, study: Spool) -> None:
        """The study parent's description and best-trial tag, as of the trials ended so far."""
        from segtrack_mlflow.study_summary import describe

        for row, folder in self._trials.values():
            if row.run_id is None:  # the shipper may have created the trial's run since
                row.run_id = read_meta(folder).get("run_id")
        experiment_id = read_meta(study.folder).get("experiment_id")
        rows = [row for row, _ in self._trials.values()]
        note = describe(self._study_name, self._objective, self._direction, rows, self._study_best, experiment_id)
        tags = {"mlflow.note.content": note}
        if self._study_best is not None:
            tags["segtrack.best_trial"] = str(self._study_best[0])
        study.add(Tags(tags))

    @hookimpl
    def trial_links(self, study_id, number):
        """The trial's MLflow run: name, experiment, tracking URI (password masked) and, once the
        shipper created it (waited for briefly), its id. A trial failed before any fit has none."""
        if self.study is None or study_id != self.study_id or not self._trial_run or self._trial_run[0] != number:
            return None
        spool = self._trial_run[1]
        self._send(spool, waited_for=True)
        deadline = time.monotonic() + LINK_WAIT_S
        while spool.run_id is None and time.monotonic() < deadline:
            time.sleep(0.05)
            spool.meta = read_meta(spool.folder)
        links = {
            "mlflow.run_name": spool.meta["run_name"],
            "mlflow.experiment": self.experiment,
            "mlflow.tracking_uri": spool.meta["tracking_uri"],  # as spools keep it: password masked
        }
        if spool.run_id:
            links["mlflow.run_id"] = spool.run_id
        if spool.meta.get("experiment_id"):
            links["mlflow.experiment_id"] = spool.meta["experiment_id"]
        return links

    def _failed_trial_run(self, trial) -> Spool:
        """A trial that failed before any fit began still gets its run, with the sampled values."""
        spool = self._new_spool(
            self._run_name(f"{trial.study_name}-trial-{trial.number}"), self._trial_tags(trial.number), self.study
        )
        spool.add(Params({key: redact(str(value)) for key, value in trial.params.items()}))
        return spool

    @hookimpl
    def study_end(self, result):
        if self.study is None or result.study_id != self.study_id:
            return
        if result.best_number is not None and result.best_value is not None:
            self._study_best = (result.best_number, result.best_value)
        study, self.study = self.study, None
        self._describe_study(study)  # the trial runs' ids, known by now, become links
        study.add(Tags({"segtrack.study_status": result.status, "segtrack.trials_run": str(len(result.trials))}))
        study.add(Status("FINISHED" if result.status == "completed" else "KILLED", _now_ms()))
        study.close()
        self._send(study)
        trials, self._trial_spools = self._trial_spools, []
        self._drain(study, also=trials)

    def _drain(self, spool: Spool, also: list[Spool] | tuple[Spool, ...] = ()) -> None:
        """Wait for the run (and the runs ``also`` names: a study's trials) to be sent when
        ``mlflow.drain_timeout`` asks for it (by default the fit returns at once and the shipper
        sends the rest); say what the server refused."""
        timeout, new_store, self._new_store = self._drain_wait_s, self._new_store, False
        spools = [*also, spool]
        # the wait a new store adds (a reader right after the fit would race its creation) ends when
        # the shipper cannot create it (a folder in its place): it is not being created
        until_error = new_store and not self.section["drain_timeout"]
        started = time.monotonic()
        if timeout > 0:
            sent = self._link.wait_sent(spools, timeout, until_error=until_error)
        else:
            sent = not any(s.has_pending() for s in spools)
        waited = time.monotonic() - started
        self._report_rejected(spool)
        if sent:
            return
        error = self._link.error()
        if timeout == 0 and not error:
            log.info(
                "MLflow run %r: the shipper (log: %s) sends what is left in the background",
                spool.meta["run_name"],
                self._link.files.log,
            )
            return
        left = spool.summary()
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(left.items())) or "the last records"
        log.warning(
            "MLflow run %r is not fully sent%s (%s): %s still spooled in %s. They are kept on disk; the shipper "
            "retries for %.0f s, else send them with `segtrack mlflow sync` once %s is reachable",
            spool.meta["run_name"],
            f" after {waited:.0f} s" if timeout else "",
            error or "still sending",
            what,
            spool.folder,
            self.section["shipper_linger"],
            self.tracking_uri,
        )

    def _report_rejected(self, spool: Spool) -> None:
        """Records the server refused are kept in rejected.jsonl (never dropped): say so here, where
        the user looks, not only in the shipper's log."""
        path = spool.folder / "rejected.jsonl"
        if path.is_file():
            with path.open("rb") as fh:
                count = sum(1 for _ in fh)
            log.error("MLflow refused %d record(s) of run %r; they are kept in %s", count, spool.meta["run_name"], path)

    # -- state in checkpoints -------------------------------------------------------------------

    @hookimpl
    def state_dict(self):
        if self.spool is None:
            return None
        return {
            "spool": str(self.spool.folder),
            "local_id": self.spool.local_id,
            "run_id": self.spool.run_id,
            "host": socket.gethostname(),
            "best": self._best,  # a resumed fit still links its model to the best epoch's step
        }

    @hookimpl
    def load_state_dict(self, state):
        self.resume_state = dict(state)
