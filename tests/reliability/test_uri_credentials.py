"""Scenario 7 (credentials in the URI): `http://admin:<password>@host:port` as the tracking URI of
real `segtrack` processes against an `mlflow server` that enforces basic auth. The password
authenticates, yet shows in no output, no file the run leaves, no param or tag; a spool written
while the server was down keeps no secret and is sent later by `segtrack mlflow sync` with the
password from configs/.secrets.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

PASSWORD = "uri-s3cret-pass"  # the server's admin password (MLflow wants at least 12 characters)
SETS = [
    "train.epochs=2",
    "data.num_samples=8",
    "data.image_size=16",
    "model.width=2",
    "model.depth=1",
    "export.enabled=false",
    "mlflow.drain_timeout=2",
    "mlflow.request_timeout=1",
    "plugins.disabled=['progress', 'analytics']",
]


def _segtrack(cwd, *args, uri, sets=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "SEGTRACK_"))}
    env.update({"MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"})
    sets = [a for s in [*SETS, *sets] for a in ("--set", s)] if args[0] == "train" else []
    out = subprocess.run(
        [sys.executable, "-m", "segtrack", *args, *sets], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out


@pytest.mark.slow  # 65 s; make test keeps test_mlflow_server's credentials and test_analytics_credentials
def test_a_password_in_the_uri_authenticates_and_shows_nowhere(tmp_path, sqlite_template, monkeypatch, report_row):
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    from mlflow import MlflowClient

    from testsupport.mlflow_server import basic_auth_server

    (tmp_path / "server").mkdir()
    shutil.copy(sqlite_template, tmp_path / "server" / "backend.db")
    server = basic_auth_server(tmp_path / "server", tmp_path / "server" / "backend.db", PASSWORD)
    uri = server.uri.replace("http://", f"http://admin:{PASSWORD}@")
    work = tmp_path / "work"
    work.mkdir()
    outputs = []
    try:
        # 1. the server is down: the fit spools, the spool keeps the URI masked
        # (its shipper gives up at once, as it would after mlflow.shipper_linger: sync sends the run)
        down = _segtrack(work, "train", uri=uri, sets=["mlflow.shipper_linger=0"])
        assert down.returncode == 0 and "is unreachable" in down.stderr, down.stderr[-3000:]
        server.start()
        # 2. status, and a sync without any credentials: refused, the records stay
        status = _segtrack(work, "mlflow", "status", uri=server.uri)
        assert status.returncode == 0 and "http://admin:***@127.0.0.1" in status.stdout
        refused = _segtrack(work, "mlflow", "sync", uri=server.uri)
        assert refused.returncode == 1 and "record(s) still spooled" in refused.stdout
        # 3. the spooled run goes out with the password from configs/.secrets.toml (sync before any
        # fit: a fit's shipper would send it with the URI's credentials, as it serves the whole folder)
        (work / "configs").mkdir()
        (work / "configs" / ".secrets.toml").write_text(f"[default.mlflow]\npassword = '{PASSWORD}'\n")
        synced = _segtrack(work, "mlflow", "sync", uri=server.uri)
        assert synced.returncode == 0 and "sent" in synced.stdout, synced.stdout + synced.stderr
        (work / "configs" / ".secrets.toml").unlink()
        # 4. a fit with the server up: the URI's credentials alone authenticate
        up = _segtrack(work, "train", uri=uri, sets=["mlflow.drain_timeout=60"])
        # no warning (all sent): the only lines name the run with its experiment's page, then the
        # run's page; neither link carries the user
        assert up.returncode == 0 and all(line.startswith("mlflow: ") for line in up.stderr.splitlines()), up.stderr
        pages = [line for line in up.stderr.splitlines() if "/#/experiments/" in line]
        assert len(pages) == 2 and not [p for p in pages if "@" in p or "admin" in p], pages
        # 5. a wrong password in the URI stops the fit before training, masked
        wrong = _segtrack(work, "train", uri=uri.replace(PASSWORD, "wrong-pass-123"))
        assert wrong.returncode == 2 and "http://admin:***@" in wrong.stderr
        assert "rejected the credentials" in wrong.stderr
        outputs = [down, status, refused, up, synced, wrong]

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("segtrack").experiment_id])
        points = [len(client.get_metric_history(r.info.run_id, "val_dice")) for r in runs]
    finally:
        server.stop()
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs) and points == [2, 2]
    shown = [text for out in outputs for text in (out.stdout, out.stderr)]
    shown += [v for r in runs for v in (*r.data.params.values(), *r.data.tags.values())]
    assert not [text for text in shown if PASSWORD in text or "wrong-pass-123" in text]
    files = [p for p in work.rglob("*") if p.is_file()]
    assert not [p for p in files if PASSWORD.encode() in p.read_bytes()]
    assert len(files) > 5
    report_row(
        scenario="password inside the tracking URI, basic-auth server, offline spool + sync",
        runs=2,
        faults=1,
        expected="0 leaks",
        found=f"0 leaks in {len(shown)} texts, {len(files)} files",
        duplicates="-",
        result="pass",
    )
