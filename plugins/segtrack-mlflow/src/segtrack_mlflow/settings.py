"""The ``mlflow`` settings section, declared to segtrack through ``settings_schema`` (segtrack
checks it with the core's and fills in the defaults)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segtrack import Setting, checked_section, is_bool, is_int, is_number, is_str, one_of

POLICIES = ("best+last", "best", "last", "all", "none")


def _seconds(minimum: float, strict: bool = False):
    return lambda v: is_number(v) and (v > minimum if strict else v >= minimum)


SCHEMA = [
    Setting("mlflow.tracking_uri", "a URI string (empty: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)", is_str, ""),
    Setting("mlflow.offline", '"auto" or "fail" (auto: spool and send when reachable)', one_of("auto", "fail"), "auto"),
    Setting("mlflow.spool_dir", "a folder path", lambda v: is_str(v) and bool(v), ".segtrack/spool"),
    # 0: a fit returns at once and the shipper process sends the rest; > 0: the fit waits that long
    Setting("mlflow.drain_timeout", "a number of seconds >= 0 (0: do not wait for the send)", _seconds(0), 0.0),
    Setting("mlflow.request_timeout", "a number of seconds > 0", _seconds(0, strict=True), 10.0),
    # the shipper sends at most this often (and at each epoch's end): up to 1,000 points per request
    Setting("mlflow.flush_interval", "a number of seconds > 0", _seconds(0, strict=True), 2.0),
    # a store whose sending costs this machine's CPU (a database file, a server on loopback): the
    # shipper holds its sends while fits train, at most this long (it creates no run meanwhile);
    # a fit's end, or anyone waiting for the send, ends it
    Setting("mlflow.quiet_start", "a number of seconds >= 0 (0: send from the first epoch)", _seconds(0), 30.0),
    # how long the shipper keeps retrying an unreachable server after the last fit ended
    Setting("mlflow.shipper_linger", "a number of seconds >= 0", _seconds(0), 300.0),
    # Lightning's default: 50 (a per-step curve of a few hundred points per epoch at most)
    Setting("mlflow.log_every_n_steps", "an integer >= 0 (0: no per-step loss)", lambda v: is_int(v) and v >= 0, 50),
    Setting("mlflow.checkpoint_policy", " | ".join(POLICIES), one_of(*POLICIES), "best+last"),
    # best.pt / last.pt are uploaded at most this often while a fit runs, and always at its end
    Setting("mlflow.checkpoint_interval", "a number of seconds >= 0 (0: after every epoch)", _seconds(0), 60.0),
    Setting("mlflow.sample_overlays", "0 to 16", lambda v: is_int(v) and 0 <= v <= 16, 4),
    Setting(
        "mlflow.run_name_suffix", '"id" (<run.name>-<short id>) or "none" (run.name as is)', one_of("id", "none"), "id"
    ),
    Setting("mlflow.register_model", '"" (off) or a registered model name', is_str, ""),
    Setting("mlflow.system_metrics", "true or false", is_bool, False),
    Setting("mlflow.system_metrics_interval", "a number of seconds >= 1", _seconds(1), 10.0),
    Setting("mlflow.telemetry", "true or false (MLflow's usage telemetry; off unless true)", is_bool, False),
    Setting("mlflow.username", "a string (basic auth; or MLFLOW_TRACKING_USERNAME)", is_str, ""),
    Setting("mlflow.password", "a string (put it in configs/.secrets.toml)", is_str, "", secret=True),
]
DEFAULTS = {s.key.split(".", 1)[1]: s.default for s in SCHEMA}


def mlflow_section(settings: Any) -> dict[str, Any]:
    """The ``mlflow`` section with defaults filled in, checked (for callers outside the CLI and
    trainer, which check it through ``settings_schema``)."""
    return checked_section(settings, "mlflow", SCHEMA, {"experiment": " (the experiment is run.experiment)"})


def experiment_of(settings: Any) -> str:
    """The one key naming the experiment: ``run.experiment``."""
    run = settings.get("run", {}) if isinstance(settings, Mapping) else (settings.get("run") or {})
    return (run or {}).get("experiment") or "segtrack"
