# Loomview: `make run` starts everything, `make test` checks everything.

PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall only when the dependency list changes; the stamp keeps `make run` fast.
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt install bench-ingest

run: $(STAMP)
	$(PY) manage.py runstack

test: lint
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

install: $(STAMP)

# Sustained OTLP ingest through daphne; target >= 10,000 spans/s.
bench-ingest: $(STAMP)
	$(PY) bench/ingest.py

$(PY):
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)
