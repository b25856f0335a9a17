# Two commands on a fresh machine: `make run` and `make test` (README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# Test processes: two single-threaded processes beat one two-threaded one on tiny models.
TEST_WORKERS ?= 2

.PHONY: run test lint typecheck check venv dev migrate demo-model bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install only when the requirement files change (stamp files).
$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

migrate: venv
	$(BIN)/python -m app.db.migrate

## Set everything up and serve the API + a Celery worker on the embedded defaults.
run: venv
	PORT=$(PORT) bash scripts/serve.sh

## The whole test suite.
test: dev
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --timeout 900 $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check app workers tests benchmarks examples migrations studies
	$(BIN)/ruff format --check app workers tests benchmarks examples migrations studies

typecheck: dev
	$(BIN)/mypy

check: lint typecheck test

## A pretrained small Llama for the README demo (var/models/demo-llama, corpus in var/data).
demo-model: venv
	$(BIN)/python -m workers.ml.make_model --arch llama --size tiny --out var/models/demo-llama --corpus-out var/data/python-corpus.txt

bench: dev
	$(BIN)/python benchmarks/fit_bench.py
	$(BIN)/python benchmarks/fits_bench.py
	$(BIN)/python benchmarks/predict_bench.py
	$(BIN)/python benchmarks/prune_bench.py
	$(BIN)/python benchmarks/train_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
