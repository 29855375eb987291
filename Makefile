# One place for the project's commands. `make run` starts the whole system on the
# embedded memory store; `make test` runs every check (ruff, mypy, pytest).
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install run worker lint format mypy test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	JOB_STORE=$${JOB_STORE:-memory} $(BIN)/bagbot serve

worker: install
	$(BIN)/python -m backend.workers

lint: install
	$(BIN)/ruff check backend tests scripts

format: install
	$(BIN)/ruff format backend tests scripts

mypy: install
	$(BIN)/mypy

test: lint mypy
	$(BIN)/pytest

bench: install
	$(BIN)/bagbot bench

clean:
	rm -rf $(VENV) .venv-redis-floor .pytest_cache .mypy_cache .ruff_cache artifacts
