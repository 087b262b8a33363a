"""Read runs from a tracking server over MLflow's REST API: paged run search (params, tags and
latest metrics come with each page) plus bulk metric histories (100 runs per request)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from segtrack import ConfigError
from segtrack_analytics import build
from segtrack_analytics.errors import StoreError, StoreUnreachable
from segtrack_analytics.tables import KEY_VALUE, METRIC, RUN_INDEX, RunDetails
from segtrack_mlflow.uri import auth_header, redact

PAGE = 1000
BULK_RUNS = 100  # the server's limit per get-history-bulk request


class RestSource:
    def __init__(self, uri: str, timeout: float = 60.0):
        self.base = uri.rstrip("/")  # without user:password@ (uri.connect_uri): credentials travel as a header
        self.timeout = timeout
        self._runs: dict[str, dict] = {}  # run id -> the run as the last search returned it

    def _request(self, path: str, body: dict | None = None, query: list[tuple[str, str]] | None = None) -> dict:
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, method="POST" if data else "GET", headers={"Content-Type": "application/json"}
        )
        header = auth_header()
        if header:
            request.add_header("Authorization", header)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise ConfigError(
                    f"{self.base} rejected the credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
                ) from None
            if exc.code == 404:
                raise StoreError(
                    f"{self.base} is not an MLflow tracking server (HTTP 404 on {path}): "
                    f"pass the server's address as --tracking-uri"
                ) from None
            raise StoreError(f"{self.base}{path} answered HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = redact(str(getattr(exc, "reason", exc)))
            raise StoreUnreachable(f"the tracking server {self.base}", reason) from None

    def _experiments(self, names: Sequence[str] | None) -> dict[str, str]:
        found, token = {}, None
        while True:
            page = self._request(
                "/api/2.0/mlflow/experiments/search", {"max_results": PAGE, **({"page_token": token} if token else {})}
            )
            for exp in page.get("experiments", []):
                if exp.get("lifecycle_stage", "active") == "active" and (not names or exp["name"] in names):
                    found[exp["experiment_id"]] = exp["name"]
            token = page.get("next_page_token")
            if not token:
                return found

    def run_index(self, experiments: Sequence[str] | None) -> pa.Table:
        names = self._experiments(experiments)
        self._runs = {}
        token = None
        while names:
            body = {"experiment_ids": list(names), "max_results": PAGE, "run_view_type": "ACTIVE_ONLY"}
            page = self._request("/api/2.0/mlflow/runs/search", {**body, **({"page_token": token} if token else {})})
            for run in page.get("runs", []):
                self._runs[run["info"]["run_id"]] = run
            token = page.get("next_page_token")
            if not token:
                break
        rows = [
            (
                rid,
                r["info"]["experiment_id"],
                names[r["info"]["experiment_id"]],
                r["info"].get("run_name"),
                r["info"].get("status"),
                _int(r["info"].get("start_time")),
                _int(r["info"].get("end_time")),
            )
            for rid, r in self._runs.items()
        ]
        return pa.Table.from_pylist([dict(zip(RUN_INDEX.names, row)) for row in rows], schema=RUN_INDEX)

    def details(self, run_ids: Sequence[str], histories: bool = True) -> RunDetails:
        """Histories are read whatever ``histories`` says (they come with the same reads)."""
        params, tags, latest = [], [], []
        keys_to_runs: dict[str, list[str]] = defaultdict(list)
        for rid in run_ids:
            data = self._runs[rid].get("data", {})
            params += [(rid, p["key"], p.get("value", "")) for p in data.get("params", [])]
            tags += [(rid, t["key"], t.get("value", "")) for t in data.get("tags", [])]
            for m in data.get("metrics", []):
                latest.append(
                    (rid, m["key"], _int(m.get("step", 0)), _float(m.get("value")), _int(m.get("timestamp")), False)
                )
                keys_to_runs[m["key"]].append(rid)
        history = []
        for key, rids in keys_to_runs.items():
            for start in range(0, len(rids), BULK_RUNS):
                query = [("run_id", r) for r in rids[start : start + BULK_RUNS]] + [
                    ("metric_key", key),
                    ("max_results", "25000"),
                ]
                for m in self._request("/ajax-api/2.0/mlflow/metrics/get-history-bulk", query=query).get("metrics", []):
                    history.append(
                        (
                            m["run_id"],
                            m["key"],
                            _int(m.get("step", 0)),
                            _float(m.get("value")),
                            _int(m.get("timestamp")),
                            False,
                        )
                    )
        return RunDetails(
            _table(params, KEY_VALUE), _table(tags, KEY_VALUE), _table(latest, METRIC), _table(history, METRIC)
        )

    def details_all(self, experiments: Sequence[str] | None, histories: bool = True) -> RunDetails:
        return self.details(list(self._runs))

    def histories_all(self, experiments: Sequence[str] | None) -> pa.Table:
        return build.history(self.details_all(experiments).metrics)

    def count_points(self, experiments: Sequence[str] | None) -> int:
        return self.histories_all(experiments).num_rows


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    columns: list[Sequence[Any]] = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)


def _int(value) -> int | None:
    return None if value is None else int(value)


def _float(value) -> float:
    return float(value) if value is not None else float("nan")  # JSON "NaN"/"Infinity" parse as floats too
