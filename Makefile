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

demo: install
	test -f data/move4digits/classInd.txt || \
	  $(BIN)/python -m training.synth --out data/move4digits --classes 4 --per-class 60 --seed 0
	$(BIN)/python -m training.run --family c3d_vll --data data/move4digits --out store

bench: install
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/models.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
