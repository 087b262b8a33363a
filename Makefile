# Every target works from a fresh clone: `make install` builds .venv, the rest use it.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: install train cv lint format test reliability bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch first and pinned: the CPU wheel on this disk; an unpinned torch pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	# the test extra brings lightning and pytorch-ignite (segtrack.integrations' tests): the torch above stays
	$(PY) -m pip install --quiet -e '.[test]' $(foreach p,$(dir $(PLUGINS)),-e '$(p)[test]')
	# MONAI for the tests and examples that drive segtrack with MONAI's own networks, transforms and
	# inferers; --no-deps: its requirements would replace our CPU torch (it needs only numpy besides)
	$(PY) -m pip install --quiet --no-deps monai==1.6.1
	touch $@

train: install
	$(VENV)/bin/segtrack train

cv: install
	$(VENV)/bin/segtrack cv

# gates: ruff (lint + format) on every Python path, mypy on the files pyproject.toml names; all three
# run and report, and the target fails if any of them found something
LINT_PATHS := src plugins tests bench examples conftest.py
lint: install
	@status=0; \
	$(VENV)/bin/ruff check $(LINT_PATHS) || status=1; \
	$(VENV)/bin/ruff format --check $(LINT_PATHS) || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

# fix what the linter can fix, then format (a fix may leave lines to reformat)
format: install
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

# two workers, one test file each at a time (a file's tests share its servers): most tests wait
# on processes and servers, so two workers on 2 cores take ~2/3 of the serial time (397 s vs 626 s);
# one torch thread per process: two workers (and their subprocesses) on 2 cores otherwise oversubscribe
# them (15 % slower). The longest reliability scenarios are marked slow: `make reliability` runs them.
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

# every reliability scenario, and the slow tests of the other suites (moved out of make test's budget)
reliability: install
	$(PY) -m pytest -q tests/reliability
	$(PY) -m pytest -q -m slow --ignore=tests/reliability

bench: install
	@for script in bench/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) checkpoints exports mlflow.db mlartifacts .segtrack
