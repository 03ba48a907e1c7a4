# Loomview: `make run` starts everything, `make test` checks everything.

PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall only when the dependency list changes; the stamp keeps `make run` fast.
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-sqlite test-postgres lint fmt install bench-ingest browser servers

run: $(STAMP)
	$(PY) manage.py runstack

# Two passes: everything on SQLite with the in-memory channel layer, then the
# backend-specific tests (marked `backends`) on real PostgreSQL + Redis servers
# that tests/servers.py starts. `make test` sets up what it needs first.
#
# Each pass runs on $(TEST_WORKERS) pytest-xdist workers: most of the suite waits
# (on Temporal, daphne, Chromium), so two workers fill two cores. --dist loadgroup
# keeps a module with a module-scoped stack on one worker (tests/conftest.py);
# --no-loadscope-reorder keeps pytest-django's order on each worker (transactional
# tests, which flush the database, after the others). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: lint browser servers
	$(VENV)/bin/pytest $(XDIST)
	$(PY) -m tests.servers pytest $(XDIST) -m backends

# The quick tests only (no browser, no killed processes, no whole stacks): for the
# edit-test loop. `make test` still runs everything.
test-fast: $(STAMP)
	$(VENV)/bin/pytest $(XDIST) -m "not e2e and not slow"

test-sqlite: $(STAMP) browser
	$(VENV)/bin/pytest $(XDIST)

test-postgres: $(STAMP) servers
	$(PY) -m tests.servers pytest $(XDIST) -m backends

# Browser tests drive Debian's Chromium; Playwright never downloads one.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
		else \
			echo "Chromium is missing: run 'sudo apt-get install chromium' (Debian/Ubuntu), then make test again" >&2; \
			exit 1; \
		fi; \
	fi

# PostgreSQL and Redis come from wheels in .[test]; Debian's packages are the fallback.
servers: $(STAMP)
	@if ! $(PY) -m tests.servers check >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get update -q && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql redis-server; \
		else \
			echo "No runnable PostgreSQL/Redis: run 'sudo apt-get install postgresql redis-server', then make test again" >&2; \
			exit 1; \
		fi; \
	fi
	@$(PY) -m tests.servers check

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

# opentelemetry-instrumentation-openai-agents-v2 (the OTel GenAI instrumentation of
# the Agents SDK) and OpenLLMetry's opentelemetry-instrumentation-openai-agents
# install the same module, opentelemetry.instrumentation.openai_agents: the first
# goes to a directory of its own, which only the matrix test's app puts on its path.
SIDE_GENAI := $(VENV)/side/openai-agents-v2

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(SIDE_GENAI) \
		'opentelemetry-instrumentation-openai-agents-v2==0.1.0'
	touch $(STAMP)
