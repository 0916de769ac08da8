# voicebridge: `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := redis-server chromium espeak-ng sox

.PHONY: run install test lint format bench soak test-azure system-deps clean

run: install
	$(PY) -m voicebridge serve

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,redis]'
	touch $(STAMP)

# Debian packages the tests drive for real: redis-server, headless chromium, espeak-ng, sox.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test: install system-deps
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check voicebridge tests
	$(VENV)/bin/ruff format --check voicebridge tests
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format voicebridge tests
	$(VENV)/bin/ruff check --fix voicebridge tests

bench: install
	$(PY) -m voicebridge.bench $(BENCH_ARGS)

soak: install system-deps
	$(PY) -m pytest -m soak -o addopts="" -p no:randomly

test-azure: install
	$(PY) -m pytest -m azure -o addopts=""

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/artifacts
