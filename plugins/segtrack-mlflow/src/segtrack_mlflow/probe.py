"""Is a tracking server reachable, and does it accept our credentials? (stdlib only: fast)"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request


def probe_http(uri: str, username: str = "", password: str = "", timeout: float = 3.0) -> str:
    """Returns "ok", "unauthorized" or "unreachable: <why>"."""
    request = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 1}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    username = username or os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    password = password or os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
    if username:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        return "ok"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return "unauthorized"
        return "ok" if exc.code < 500 else f"unreachable: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {getattr(exc, 'reason', exc)}"
