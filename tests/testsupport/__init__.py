"""segtrack's test-support package: what every suite (tests/, tests/reliability/ and each plugin's
tests/) shares. It is never installed: pytest finds it through ``pythonpath = ["tests"]`` in
pyproject.toml, and the repository's root conftest.py registers its fixtures.

Helpers (import them):
    settings       TINY settings for a fit of a fraction of a second, and each suite's variant
    plugins        Recorder (every hook call, in order), RaiseAt, first_party_plugins()
    factories      model and data builders named by ``model.factory`` / ``data.factory``
    ports          free_port()
    stores         migrated SQLite stores and throw-away PostgreSQL databases
    mlflow_server  a real `mlflow server` (own process group, stopped by PID), with basic auth
    mlflow_reads   what a fit logged, read back through MLflow's client
    analytics_stores  stores filled through MLflow's client, and a check that DuckDB holds the same

Fixtures (pytest plugins, registered by the root conftest.py):
    fixtures       clean_env (autouse), settings_factory, trainer_factory, fake_dist
    store_fixtures sqlite_template, sqlite_uri, postgres_uri, sqlite_server, own_server
    scenarios      report_row and the "reliability scenarios" table printed at the end
"""
