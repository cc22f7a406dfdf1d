# Two commands do everything (each sets up .venv on first use, idempotently):
#   make train            # python train.py model=vae on the embedded digits, prints test metrics
#   make test             # the import contracts (lint-imports), then the whole test suite
# Other overrides: make train ARGS="model=vae trainer.max_epochs=10"

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?= model=vae
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup train test bench lint clean

setup: $(STAMP)

# Re-installs only when the lock file or the package metadata change.
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

train: $(STAMP)
	$(BIN)/python train.py $(ARGS)

# The dependency contracts (pyproject.toml [tool.importlinter]) first, then the tests;
# pytest exits 5 when it collects no tests: report it instead of failing.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

# Peer implementations (normflows, ...) are installed for benchmarking only.
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-bench.txt
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
