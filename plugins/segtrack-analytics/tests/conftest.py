"""Real stores for the analytics tests: SQLite (migrated template), a server, PostgreSQL."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from segtrack.testing import clean_env  # noqa: F401
from segtrack_mlflow.testing import postgres_uri, sqlite_template, sqlite_uri  # noqa: F401
