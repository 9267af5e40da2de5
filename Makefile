# lakeforge — the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
LF    := $(VENV)/bin/lakeforge
# tests use their own state dir so they never touch a running demo's services
TEST_HOME ?= $(CURDIR)/.lakeforge-test

.PHONY: setup demo up down status test test-all test-unit lock bench bench-train bench-setup bench-curate clean

setup:            ## idempotent: venv from the lock file, JVM jars via Maven, prerequisite checks
	@bash scripts/setup.sh

demo: setup       ## start everything, run the pipeline through Airflow, print a real prediction
	$(LF) demo

up: setup
	$(LF) up

down:
	@if [ -x $(LF) ]; then $(LF) down; fi

status:
	$(LF) status

test: setup       ## unit + integration + end-to-end on real services (< 20 min on 2 cores)
	LAKEFORGE_HOME=$(TEST_HOME) $(PY) -m pytest -m "not slow" --timeout=1500 $(PYTEST_ARGS)

test-all: setup   ## everything, heavy cases included
	LAKEFORGE_HOME=$(TEST_HOME) $(PY) -m pytest --timeout=3600 $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit -m "not slow" $(PYTEST_ARGS)

lock:             ## re-resolve requirements/lock.txt from requirements/requirements.in
	python3 -m uv pip compile requirements/requirements.in --python-version 3.11 -o requirements/lock.txt

bench: setup
	$(PY) bench/demo.py

bench-train: setup  ## lakeforge's training loop beside HF Trainer (about 10 min on 2 cores)
	$(PY) bench/train.py $(BENCH_ARGS)

bench-setup: setup   ## benchmark-only packages (datatrove + spaCy), pinned apart from the main lock
	python3 -m uv pip install -q --python $(PY) -r requirements/bench-lock.txt

bench-curate: bench-setup   ## lakeforge vs pandas+BeautifulSoup vs datatrove on 500 MB -> bench/results/curate.json
	$(PY) bench/curate.py --mb 500

clean: down
	rm -rf .lakeforge .lakeforge-test
