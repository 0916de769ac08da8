# voicebridge: `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
APT_PACKAGES := redis-server chromium espeak-ng sox postgresql nginx openssl

.PHONY: run install dev-install test lint format bench soak test-azure system-deps clean

run: install
	$(PY) -m voicebridge serve

# `make run` installs what running needs; `make test` (and lint, bench, soak) adds the
# test tooling (Playwright, pytest, mypy, ...).
install: $(STAMP)

dev-install: $(DEV_STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[redis]'
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,redis]'
	touch $(DEV_STAMP)

# Debian packages the tests drive for real: redis-server, headless chromium, espeak-ng and
# sox (speech), postgresql (call records), nginx and openssl (TLS and load-balancer tests).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

test: dev-install system-deps
	$(PY) -m pytest

lint: dev-install
	$(VENV)/bin/ruff check voicebridge tests
	$(VENV)/bin/ruff format --check voicebridge tests
	$(VENV)/bin/mypy

format: dev-install
	$(VENV)/bin/ruff format voicebridge tests
	$(VENV)/bin/ruff check --fix voicebridge tests

# The conversation scenario speaks with espeak-ng and sox; `make bench BENCH_ARGS=--quick` tries it out.
bench: dev-install
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="espeak-ng sox"
	$(PY) -m voicebridge.bench $(BENCH_ARGS)

soak: dev-install system-deps
	$(PY) -m pytest -m soak -o addopts="" -p no:randomly

test-azure: dev-install
	$(PY) -m pytest -m azure -o addopts=""

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache tests/artifacts
