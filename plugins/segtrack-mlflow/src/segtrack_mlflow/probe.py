"""Is a tracking server reachable, and does it accept our credentials? (stdlib only: fast)"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import NamedTuple

from segtrack import MASK
from segtrack_mlflow.uri import auth_header, redact, split_credentials


class ServerProbe(NamedTuple):
    outcome: str  # "ok", "unauthorized" or "unreachable: <why>"
    experiment_id: str | None  # the experiment's id, when it exists


def probe_http(
    uri: str, username: str = "", password: str = "", timeout: float = 3.0, experiment: str = "Default"
) -> ServerProbe:
    """Whether the server answers and accepts the credentials, and the id of ``experiment`` there
    (one request: the experiment looked up by name).

    Credentials in the URI (``http://user:password@host:port``) are sent as basic auth, never as
    part of the host name; else the arguments, else MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN.
    """
    bare, uri_username, uri_password = split_credentials(uri)
    if uri_password and uri_password != MASK:
        username, password = uri_username, uri_password
    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{bare.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}")
    header = auth_header(username or uri_username, password)
    if header:
        request.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            found = json.loads(response.read() or b"{}").get("experiment", {})
        return ServerProbe("ok", found.get("experiment_id"))
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return ServerProbe("unauthorized", None)
        return ServerProbe("ok" if exc.code < 500 else f"unreachable: HTTP {exc.code}", None)  # 404: no such experiment
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return ServerProbe(f"unreachable: {redact(str(getattr(exc, 'reason', exc)))}", None)
