"""Scenario 6 (tracking part): bad tracking input through the CLI: a message naming the problem
and the fix, a non-zero exit, nothing written, no run left RUNNING. The core's 27 cases of
settings, data and checkpoints are in tests/test_bad_input.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testsupport.ports import free_port

SETS = [
    "train.epochs=1",
    "data.num_samples=8",
    "data.image_size=16",
    "model.width=2",
    "model.depth=1",
    "plugins.disabled=['progress', 'analytics']",
]


def _train(cwd, *extra, env=None):
    args = [a for s in [*SETS, *extra] for a in ("--set", s)]
    return subprocess.run(
        [sys.executable, "-m", "segtrack", "train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def _assert_clean_failure(out, tmp_path, fragments, before):
    assert out.returncode == 2, out.stderr[-2000:]
    for fragment in fragments:
        assert fragment in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert {p.name for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["mlflow.tracking_uri='localhost:5000'"], ["is malformed or of an unknown kind", "http://host:5000"]),
        (["mlflow.tracking_uri='file:./mlruns'"], ["legacy file store", "MLFLOW_ALLOW_FILE_STORE=true"]),
        (
            [f"mlflow.tracking_uri='http://127.0.0.1:{free_port()}'", "mlflow.offline='fail'"],
            ["is unreachable", 'mlflow.offline = "auto"'],
        ),
        (["mlflow.offline='sometimes'"], ["mlflow.offline = 'sometimes' is invalid", '"auto" or "fail"']),
        (["mlflow.drain_timeout=-1"], ["mlflow.drain_timeout = -1 is invalid"]),
    ],
    ids=["malformed-uri", "file-store", "unreachable-fail", "offline-value", "negative-drain"],
)
def test_bad_tracking_settings(tmp_path, extra, fragments):
    before = {p.name for p in tmp_path.iterdir()}
    _assert_clean_failure(_train(tmp_path, *extra), tmp_path, fragments, before)


def test_wrong_credentials(tmp_path, sqlite_template):
    pytest.importorskip("flask_wtf")
    from testsupport.mlflow_server import MlflowServer

    work = tmp_path / "server"
    work.mkdir()
    shutil.copy(sqlite_template, work / "backend.db")
    (work / "auth.ini").write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{work / 'users.db'}\nadmin_username = admin\n"
        "admin_password = right-password-123\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(
        f"sqlite:///{work / 'backend.db'}",
        work,
        app_name="basic-auth",
        env={"MLFLOW_AUTH_CONFIG_PATH": str(work / "auth.ini"), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test"},
    ).start()
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        out = _train(
            run_dir,
            f"mlflow.tracking_uri='{server.uri}'",
            env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
        )
        _assert_clean_failure(out, run_dir, ["rejected the credentials", "MLFLOW_TRACKING_PASSWORD"], set())
    finally:
        server.stop()


def test_full_spool_disk(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        before = {p.name for p in tmp_path.iterdir()}
        out = _train(tmp_path, f"mlflow.spool_dir='{tiny / 'spool'}'")
        _assert_clean_failure(
            out, tmp_path, ["KiB free", "set mlflow.spool_dir to a folder on a disk with room"], before
        )
        assert not any(Path(tiny).iterdir())
    finally:
        subprocess.run(["umount", str(tiny)], check=False)


def test_too_many_folds_fails_before_any_run_is_opened(tmp_path):
    """The fold count is checked against the data before cross_validation_start: no FAILED CV
    parent is left in the store, no store is even created."""
    before = {p.name for p in tmp_path.iterdir()}
    args = [a for s in SETS for a in ("--set", s)]
    out = subprocess.run(
        [sys.executable, "-m", "segtrack", "cv", "--folds", "1000", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    _assert_clean_failure(out, tmp_path, ["1000 folds need at least 1000 samples, the dataset has 8"], before)
