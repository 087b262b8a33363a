"""The ``mlflow`` plugin: every hook appends to a local spool and returns; a background shipper
sends the spool to MLflow. Nothing here blocks training on the network."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from segtrack import ConfigError, hookimpl
from segtrack.records import thaw
from segtrack_mlflow import store
from segtrack_mlflow.settings import mlflow_section
from segtrack_mlflow.spool import Spool, SpoolCorrupt
from segtrack_mlflow.uri import is_remote, local_artifact_root, redact, resolve_tracking_uri

log = logging.getLogger("segtrack.mlflow")
STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MIN_SPOOL_FREE_BYTES = 16 * 2**20
FIT_END_MARGIN_S = 30.0  # fit_end's work besides draining: status record, overlay PNGs, staging files
CHECKPOINT_KINDS = {
    "best+last": ("best", "last"),
    "best": ("best",),
    "last": ("last",),
    "all": ("best", "last", "epoch"),
    "none": (),
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowPlugin:
    """One instance per trainer (the entry point names this class)."""

    def __init__(self):
        self.section: dict = {}
        self.tracking_uri = ""  # as shown and spooled: password masked
        self._uri = ""  # as given: handed to MLflow, never printed nor written
        self.experiment = ""
        self.secret_keys: frozenset[str] = frozenset()
        self.spool: Spool | None = None
        self.parent: Spool | None = None
        self.parent_cv_id: str | None = None
        self.resume_state: dict | None = None
        self._shipper = None
        self._every = 0  # mlflow.log_every_n_steps, set at fit_start
        self._last_samples = ()
        self._best_samples = ()

    @property
    def fit_end_timeout(self) -> float:
        """fit_end drains within mlflow.drain_timeout, then reports what is left: the core's
        plugins.fit_end_timeout (meant for hung plugins) must not cut that short."""
        return self.section.get("drain_timeout", 0) + FIT_END_MARGIN_S

    # -- settings and CLI -----------------------------------------------------------------------

    @hookimpl
    def settings_loaded(self, settings):
        from segtrack.config import secret_keys

        self.section = mlflow_section(settings)
        self._uri = resolve_tracking_uri(None, settings)
        self.tracking_uri = redact(self._uri)
        self.experiment = self.section["experiment"] or settings.get("run", {}).get("experiment") or "segtrack"
        self.secret_keys = secret_keys()
        store.use_credentials(self.section["username"], self.section["password"])
        if os.environ.get("RANK", "0") == "0":
            store.check_sqlite_store(self._uri)
            self._check_spool_dir()
            if is_remote(self._uri):
                self._check_server()

    def _check_spool_dir(self) -> None:
        """The spool must be writable with room to spare: a spool that cannot be written loses data."""
        import shutil

        folder = Path(self.section["spool_dir"])
        existing = next((p for p in [folder, *folder.resolve().parents] if p.exists()), Path("/"))
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

        outcome = probe_http(self._uri, timeout=min(5.0, self.section["request_timeout"]))
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
                "MLflow server %s is %s: logging to the local spool; it is sent when the server is back", shown, outcome
            )

    @hookimpl
    def cli_commands(self, subparsers):
        from segtrack_mlflow.cli import add_commands

        add_commands(subparsers)

    # -- runs -----------------------------------------------------------------------------------

    def _shipper_for(self, spool: Spool):
        from segtrack_mlflow.shipper import Shipper

        if self._shipper is None:
            store.configure_http(self.section["request_timeout"])
            self._shipper = Shipper(store.Clients(self._uri))
        self._shipper.add(spool)
        return self._shipper

    def _new_spool(self, run_name: str, tags: dict, parent: Spool | None) -> Spool:
        root = Path(self.section["spool_dir"]).resolve()
        spool = Spool.create(
            root,
            {
                "tracking_uri": self.tracking_uri,
                "experiment": self.experiment,
                "run_name": run_name,
                "parent": parent.local_id if parent else None,
            },
        )
        spool.append(
            {
                "t": "create",
                "experiment": self.experiment,
                "run_name": run_name,
                "tags": tags,
                "parent": parent.local_id if parent else None,
                "ts": _now_ms(),
                "artifact_location": local_artifact_root(self._uri),
            }
        )
        return spool

    def _log_params(self, spool: Spool, config) -> None:
        from segtrack_mlflow.params import to_params

        params, overflow = to_params(thaw(config), self.secret_keys)
        spool.append({"t": "params", "params": params})
        for key, text in overflow.items():
            path = spool.folder / "files" / f"{key}.txt"
            path.write_text(text)
            spool.add_file(path, "params")
            path.unlink()

    # tryfirst: the run must exist before any other plugin can fail (under plugins.strict a failure
    # in another plugin's hook stops the fit, and that run is then recorded as FAILED)
    @hookimpl(tryfirst=True)
    def cross_validation_start(self, info):
        tags = {"segtrack.cv_id": info.cv_id, "segtrack.num_folds": str(info.num_folds), "segtrack.role": "cv-parent"}
        self.parent = self._new_spool(info.run_name, tags, None)
        self.parent_cv_id = info.cv_id
        self._log_params(self.parent, info.config)
        self._shipper_for(self.parent)

    @hookimpl(tryfirst=True)  # see cross_validation_start
    def fit_start(self, run):
        import torch

        from segtrack_mlflow.gitinfo import git_tags

        tags = {
            **git_tags(),
            "segtrack.version": run.segtrack_version,
            "torch.version": torch.__version__,
            "segtrack.plugins": ",".join(f"{n}={v}" for n, v in run.plugins),
            "segtrack.device": run.device,
            "segtrack.world_size": str(run.world_size),
            store.TEST_SET_TAG: run.val_sha256,
            "data.train_sha256": run.train_sha256,
            "segtrack.num_parameters": str(run.num_parameters),
        }
        if run.fold is not None:
            tags.update(
                {
                    "segtrack.fold": str(run.fold),
                    "segtrack.num_folds": str(run.num_folds),
                    "segtrack.cv_id": run.cv_id or "",
                }
            )
        folder = Path(self.resume_state["spool"]) if self.resume_state else None
        self.spool = self._reopen(folder) if folder is not None else None
        if self.spool is not None:
            # resumed: the same run, params already logged, steps already spooled are skipped
            self.spool.append({"t": "status", "status": "RUNNING", "ts": _now_ms()})
            self.spool.append({"t": "tags", "tags": {**tags, "segtrack.resumed_from": run.resumed_from or ""}})
        else:
            parent = self.parent if (run.cv_id and run.cv_id == self.parent_cv_id) else None
            self.spool = self._new_spool(run.run_name, tags, parent)
            self._log_params(self.spool, run.config)
        self._every = self.section["log_every_n_steps"]
        self._shipper_for(self.spool)

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

    @hookimpl
    def train_batch_end(self, step):
        if (
            self._every
            and step.global_step % self._every == 0
            and step.global_step > self.spool.max_step("train_loss_step")
        ):
            self.spool.metric("train_loss_step", step.loss, step.global_step)

    @hookimpl
    def validation_end(self, result):
        self._last_samples = result.samples[: self.section["sample_overlays"]]

    @hookimpl
    def epoch_end(self, epoch):
        now = _now_ms()
        for key, value in epoch.metrics.items():
            if epoch.epoch > self.spool.max_step(key):
                self.spool.metric(key, value, epoch.epoch, now)
        if epoch.is_best:
            self._best_samples = self._last_samples
        self.spool.sync()
        self._shipper.wake()

    @hookimpl
    def checkpoint_saved(self, checkpoint):
        if checkpoint.kind in CHECKPOINT_KINDS[self.section["checkpoint_policy"]]:
            slot = None if checkpoint.kind == "epoch" else checkpoint.kind
            self.spool.add_file(checkpoint.path, "checkpoints", slot=slot)

    @hookimpl
    def model_exported(self, export):
        self.spool.add_file(export.path, "model")
        self.spool.metric("onnx_max_abs_diff", export.max_abs_diff, export.epoch)

    @hookimpl
    def fit_end(self, result):
        spool = self.spool
        if spool is None:
            return
        if result.best_epoch >= 0:
            spool.metric(f"best_{result.monitor}", result.best_value, result.best_epoch)
            spool.metric("best_epoch", result.best_epoch, result.best_epoch)
        if self._best_samples:
            from segtrack_mlflow.overlays import write_overlays

            path = write_overlays(self._best_samples, spool.folder / "files" / f"best-epoch-{result.best_epoch}.png")
            spool.add_file(path, "samples")
            path.unlink()
        spool.append({"t": "status", "status": STATUS.get(result.status, "FAILED"), "ts": _now_ms()})
        spool.sync()
        self._drain(spool)

    @hookimpl
    def cross_validation_end(self, result):
        if self.parent is None:
            return
        for metric, stats in result.summary.items():
            for stat, value in stats.items():
                self.parent.metric(f"cv_{metric}_{stat}", value, 0)
        ok = len(result.folds) == result.num_folds and all(f.status in ("completed", "stopped") for f in result.folds)
        self.parent.append({"t": "status", "status": "FINISHED" if ok else "FAILED", "ts": _now_ms()})
        self.parent.sync()
        self._drain(self.parent)
        self.parent, self.parent_cv_id = None, None

    def _drain(self, spool: Spool) -> None:
        if self._shipper.drain(self.section["drain_timeout"]):
            return
        left = spool.summary()
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(left.items()))
        log.warning(
            "MLflow run %r is not fully sent after %.0f s (%s): %s still spooled in %s. They are kept on disk; "
            "send them with `segtrack mlflow sync` once %s is reachable",
            spool.meta["run_name"],
            self.section["drain_timeout"],
            self._shipper.last_error or "still sending",
            what,
            spool.folder,
            self.tracking_uri,
        )

    # -- state in checkpoints -------------------------------------------------------------------

    @hookimpl
    def state_dict(self):
        if self.spool is None:
            return None
        return {"spool": str(self.spool.folder), "local_id": self.spool.local_id, "run_id": self.spool.run_id}

    @hookimpl
    def load_state_dict(self, state):
        self.resume_state = dict(state)
