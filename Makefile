# The README's commands. `make test` and `make demo` each do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DATA ?= data
export PYTHONUNBUFFERED := 1

.PHONY: install system-deps test demo bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first and pinned: its CPU wheel is on local disk; an open requirement could pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml requirements/constraints.txt
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e '.[dev,serve,qdrant,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages: Fashion-MNIST images (the fmnist benchmark) and Chromium (browser tests).
system-deps:
	bash scripts/ensure_system_deps.sh

test: install system-deps
	$(BIN)/python -m pytest -q

demo: install system-deps
	$(BIN)/dqecir demo --data $(DATA) --out demo

bench: install system-deps
	DATA=$(DATA) bash scripts/bench.sh

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
