# Two entry points: `make demo` runs the quickstart campaign, `make test` runs every check.
# Both create .venv/ and install what they need on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit unit-rabbitmq4 bench deploy-smoke system-deps clean

demo: $(VENV)/.demo-installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m examples.quickstart

test: system-deps $(VENV)/.dev-installed lint typecheck unit unit-rabbitmq4

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

unit: $(VENV)/.dev-installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest

# The broker tests again, against RabbitMQ 4 run from a cached Debian trixie root (needs root).
unit-rabbitmq4: $(VENV)/.dev-installed
	bash scripts/test-rabbitmq4.sh

bench: $(VENV)/.dev-installed
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m benchmarks

deploy-smoke: $(VENV)/.dev-installed
	bash scripts/deploy-smoke.sh

system-deps:
	@bash scripts/system-deps.sh

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The demo's environment has the services too, so that `colmena` works in it
$(VENV)/.demo-installed: $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[services,report]"
	touch $@

$(VENV)/.dev-installed: $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.demo-installed

clean:
	rm -rf $(VENV) runinfo .pytest_cache .mypy_cache .ruff_cache
