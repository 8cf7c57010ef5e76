# One entry point for people and CI. `make test` builds .venv from pyproject.toml and runs the suite.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-run test test-fast lint format demo demo-train bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# What running needs (the demo); `install` adds the test, lint and plotting tools.
install-run: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"

test: install
	$(BIN)/python -m pytest -q

# The suite without the end-to-end tests marked slow (training runs, servers, torchrun).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# Lint, format check and types, as CI runs them.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The main job: serve the four shipped demo bundles (demo/bundles) and print curl lines.
demo: install-run
	$(BIN)/python -m service.quickstart

# The long way: generate Move4Digits, train and export the four demo bundles into store/, serve.
demo-train: install-run
	$(BIN)/python -m service.quickstart --train

bench: install
	$(BIN)/pip install --quiet -e ".[dev,bench,scale]"
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/infer.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/long_video.py
	$(BIN)/python bench/batch.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
