"""A real `mlflow server` for tests and benches, small enough for 2 cores (DESIGN.md §4): one
worker, no job execution, its own process group, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from testsupport.ports import free_port


class MlflowServer:
    """`mlflow server` in its own process group; stop() ends that whole group, by its PID."""

    def __init__(
        self, backend_uri: str, workdir: Path, app_name: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.backend_uri, self.workdir, self.app_name = backend_uri, workdir, app_name
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> MlflowServer:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.workdir / "server-artifacts"),
        ]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "SEGTRACK_"))}
        env.update({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env})
        with open(self.workdir / f"server-{self.port}.log", "ab") as log:
            self.process = subprocess.Popen(
                cmd, cwd=self.workdir, env=env, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.workdir / f'server-{self.port}.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server on {self.uri} not ready after {timeout} s")

    def stop(self) -> None:
        """Kill the server's process group (only processes this object started)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


def basic_auth_server(workdir: Path, backend_db: Path, admin_password: str) -> MlflowServer:
    """`mlflow server` with MLflow's basic-auth app (needs Flask-WTF): user ``admin`` with
    ``admin_password``, everyone else refused. ``backend_db`` is a migrated SQLite store."""
    config = workdir / "auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{workdir / 'auth-users.db'}\n"
        f"admin_username = admin\nadmin_password = {admin_password}\nauthorization_function = "
        "mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return MlflowServer(
        f"sqlite:///{backend_db}",
        workdir,
        app_name="basic-auth",
        env={"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test"},
    )
