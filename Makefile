# sama-edit: the README's commands. `make demo` and `make test` set up .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,eval,demo,bench
BIN := $(VENV)/bin
STAMP := $(VENV)/.sama-installed

.PHONY: help setup demo test test-all lint format bench train-tiny clean

help:
	@echo "make demo      run the embedded default end to end (sets up .venv if missing)"
	@echo "make test      fast test suite (sets up .venv if missing)"
	@echo "make test-all  fast + slow tests (DDP on CPU, resume, long training)"
	@echo "make lint      ruff check + ruff format --check"
	@echo "make bench     performance scripts under benchmarks/"
	@echo "make train-tiny  reproduce a shipped editor (resumable; RECIPE=real-editor, MAX_TIME=00:00:45:00, RUN=dir)"
	@echo "make clean     remove caches and build outputs (keeps .venv and runs/)"

# torch is installed first and alone, so that no later step lets it float to a CUDA build.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sama.demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not gpu"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train-tiny: $(STAMP)
	$(BIN)/python -m sama.train_tiny $(if $(RECIPE),--recipe $(RECIPE)) $(if $(MAX_TIME),--max-time $(MAX_TIME)) $(if $(RUN),--run $(RUN))

# Every benchmarks/bench_*.py runs (each prints its table and exits non-zero when it misses its
# target); the target fails at the end, naming the scripts that missed.
bench: $(STAMP)
	@failed=""; for f in benchmarks/bench_*.py; do echo "== $$f"; \
	  HF_HUB_OFFLINE=1 $(BIN)/python $$f || failed="$$failed $$f"; echo; done; \
	  if [ -n "$$failed" ]; then echo "make bench: missed:$$failed"; exit 1; fi

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
