# One entry point for people and CI. `make test` builds .venv from pyproject.toml and runs the suite.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"

test: install
	$(BIN)/python -m pytest -q

# The main job: Move4Digits, the four demo bundles, their ONNX export, then the server.
demo: install
	$(BIN)/python -m service.quickstart

bench: install
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/infer.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
