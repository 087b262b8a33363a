"""segtrack-analytics: MLflow runs in DuckDB. Importing this package imports neither duckdb nor pyarrow."""

from typing import TYPE_CHECKING, Any

import segtrack_mlflow  # noqa: F401  (light: MLflow's telemetry switched off before any store is read)

if TYPE_CHECKING:  # imported lazily at run time (__getattr__); named here for type checkers and editors
    from segtrack_analytics.analytics import RunAnalytics

__all__ = ["RunAnalytics"]


def __getattr__(name: str) -> Any:
    if name == "RunAnalytics":
        from segtrack_analytics.analytics import RunAnalytics

        return RunAnalytics
    raise AttributeError(name)
