"""segtrack-analytics: MLflow runs in DuckDB. Importing this package imports neither duckdb nor pyarrow."""

__all__ = ["RunAnalytics"]


def __getattr__(name: str):
    if name == "RunAnalytics":
        from segtrack_analytics.analytics import RunAnalytics

        return RunAnalytics
    raise AttributeError(name)
