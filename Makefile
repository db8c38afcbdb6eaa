# opskit: `make demo` shows the whole loop on this machine; `make test` runs the suite.
# Both set up everything they need on a fresh machine (virtualenv, age/zstd, Azurite, PostgreSQL).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv tools postgres demo test lint clean

# constraints.txt pins every dependency to the versions the suite passed with (see its header).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

tools:
	@scripts/setup-tools.sh

postgres:
	@scripts/ensure-postgres.sh

demo: venv tools postgres
	@scripts/demo.sh

test: venv tools postgres
	$(BIN)/pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check opskit tests bench scripts
	$(BIN)/ruff format --check opskit tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check-import-cycles.py

clean:
	rm -rf $(VENV) .tools demo .pytest_cache .mypy_cache .ruff_cache
