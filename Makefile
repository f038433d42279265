# sluice: the two front-door commands are `make demo` and `make test`.
# Both create .venv from requirements.lock; as root they also apt-get the Debian packages they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench fuzz system-deps system-deps-bench clean

$(STAMP): requirements.lock pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

system-deps:
	scripts/install-system-deps test

system-deps-bench:
	scripts/install-system-deps bench

demo: $(STAMP)
	$(BIN)/sluice demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-cache

test: system-deps $(STAMP) lint
	$(BIN)/pytest -q tests

# The fuzzing suite at full size (the test command runs it small): >= 100,000 config inputs,
# 100,000 admin API requests, and the rest of tests/fuzz at the size each sets for SLUICE_FUZZ_FULL=1.
fuzz: system-deps $(STAMP)
	SLUICE_FUZZ_FULL=1 $(BIN)/pytest -q tests/fuzz

bench: system-deps system-deps-bench $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
