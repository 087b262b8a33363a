"""Scenario 7 (credentials in the URI, analytics side): segtrack-analytics reads a store through
segtrack-mlflow's URI module, so `http://user:password@host:port` authenticates with basic auth
and no analytics message (the `fit_end` warning, `segtrack runs` errors, the Parquet cache) holds
the password."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from testsupport.ports import free_port

PASSWORD = "analytics-s3cret-pw"  # MLflow's basic-auth app wants at least 12 characters
FIT = [
    "train.epochs=1",
    "data.num_samples=8",
    "data.image_size=16",
    "model.width=2",
    "model.depth=1",
    "export.enabled=false",
    "plugins.disabled=['progress', 'mlflow']",
]


def _segtrack(cwd, *args, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SEGTRACK_"))}
    out = subprocess.run(
        [sys.executable, "-m", "segtrack", *args],
        cwd=cwd,
        env={**base, "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert PASSWORD not in out.stdout + out.stderr, out.stdout + out.stderr
    return out


def test_a_dead_server_with_credentials_is_named_masked_and_reached_by_its_host(tmp_path, report_row):
    port = free_port()
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{port}"
    # the fit's ranking at fit_end: one warning line, the store masked, refused by the host (not a DNS failure)
    fit = _segtrack(tmp_path, "train", *[a for s in FIT for a in ("--set", s)], env={"MLFLOW_TRACKING_URI": uri})
    assert fit.returncode == 0, fit.stderr[-3000:]
    warning = [line for line in fit.stderr.splitlines() if line.startswith("segtrack: WARNING: analytics")]
    assert len(warning) == 1 and f"http://127.0.0.1:{port}" in warning[0] and "refused" in warning[0], fit.stderr
    # every `segtrack runs` command given the URI on the command line
    for command in (["list"], ["top", "--metric", "best_val_dice"]):
        out = _segtrack(tmp_path, "runs", *command, "--tracking-uri", uri)
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
        assert f"127.0.0.1:{port}" in out.stderr and "refused" in out.stderr
        assert "Name or service not known" not in out.stderr
    report_row(
        scenario="analytics: password in the URI of a dead server (fit_end warning, runs list/top)",
        runs=1,
        faults=1,
        expected="0 leaks, host reached",
        found="0 leaks in 3 outputs, connection refused by 127.0.0.1",
        duplicates="-",
        result="pass",
    )


@pytest.mark.slow  # make test is at its 10-minute budget: `make reliability` runs it
def test_runs_reads_a_basic_auth_server_with_the_uri_credentials(tmp_path, sqlite_template, monkeypatch, report_row):
    pytest.importorskip("flask_wtf", reason="mlflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    from testsupport.analytics_stores import populate
    from testsupport.mlflow_server import basic_auth_server

    (tmp_path / "server").mkdir()
    shutil.copy(sqlite_template, tmp_path / "server" / "backend.db")
    server = basic_auth_server(tmp_path / "server", tmp_path / "server" / "backend.db", PASSWORD).start()
    work = tmp_path / "work"
    work.mkdir()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
        populate(server.uri, "segtrack", runs=3)
        uri = server.uri.replace("http://", f"http://admin:{PASSWORD}@")
        listed = _segtrack(work, "runs", "list", "--tracking-uri", uri, "--format", "csv")
        refused = _segtrack(work, "runs", "list", "--tracking-uri", uri.replace(PASSWORD, "wrong-password-1"))
    finally:
        server.stop()
    assert listed.returncode == 0, listed.stderr
    assert sum("run-" in line for line in listed.stdout.splitlines()) == 3, listed.stdout
    assert refused.returncode == 2 and "rejected the credentials" in refused.stderr
    assert "wrong-password-1" not in refused.stderr
    cached = [p for p in (work / ".segtrack").rglob("*") if p.is_file()]
    assert cached and not [p for p in cached if PASSWORD.encode() in p.read_bytes()]
    report_row(
        scenario="analytics: `runs list` on a basic-auth server with user:password@ in --tracking-uri",
        runs=4,
        faults=1,
        expected="3 runs listed, wrong password exit 2, 0 leaks",
        found=f"3 runs listed, exit {refused.returncode}, 0 leaks in {len(cached)} cache files",
        duplicates="-",
        result="pass",
    )
