"""Is a tracking server reachable, and does it accept our credentials? (stdlib only: fast)"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from segtrack import MASK
from segtrack_mlflow.uri import auth_header, redact, split_credentials


def probe_http(uri: str, username: str = "", password: str = "", timeout: float = 3.0) -> str:
    """Returns "ok", "unauthorized" or "unreachable: <why>".

    Credentials in the URI (``http://user:password@host:port``) are sent as basic auth, never as
    part of the host name; else the arguments, else MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN.
    """
    bare, uri_username, uri_password = split_credentials(uri)
    if uri_password and uri_password != MASK:
        username, password = uri_username, uri_password
    request = urllib.request.Request(
        bare.rstrip("/") + "/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 1}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    header = auth_header(username or uri_username, password)
    if header:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        return "ok"
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return "unauthorized"
        return "ok" if exc.code < 500 else f"unreachable: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"unreachable: {redact(str(getattr(exc, 'reason', exc)))}"
