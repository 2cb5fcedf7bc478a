# cf2run: `make demo` and `make test` each set up what they need on a fresh machine.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench reliability clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>/dev/null
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import cf2run, prefect, google.cloud.run_v2"
	touch $@

demo: $(STAMP)  ## local cloud with the samples as Cloud Functions: discover, fleet, parity
	$(BIN)/cf2run demo

test: $(STAMP)  ## lint, type-check and run the whole test suite
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

bench: $(STAMP)
	$(BIN)/python bench/build_deploy.py
	$(BIN)/python bench/fleet.py

reliability: $(STAMP)  ## issue 18's figures: bad inputs, faults, kills, cutovers (not part of `make test`)
	$(BIN)/python bench/reliability.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
