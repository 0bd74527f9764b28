PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint demo bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'

test:
	$(BIN)/pytest -q

lint:
	$(BIN)/ruff check smoothgrad_cli tests bench
	$(BIN)/ruff format --check smoothgrad_cli tests bench

demo:
	$(BIN)/python docs/make_figures.py

bench:
	$(BIN)/python bench/bench.py

clean:
	rm -rf smoothgrad_out .pytest_cache
