"""The one root conftest: every suite (tests/, tests/reliability/, plugins/*/tests/) gets the
shared fixtures of the test-support package tests/testsupport (importable through pytest's
``pythonpath`` setting in pyproject.toml). A suite's own conftest.py holds only what is specific
to it."""

import pytest

# helpers' own asserts (e.g. testsupport.analytics_stores) report values like a test's
pytest.register_assert_rewrite("testsupport")

pytest_plugins = ["testsupport.fixtures", "testsupport.store_fixtures", "testsupport.scenarios"]
