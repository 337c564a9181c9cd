# The README's commands. Each target sets itself up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
# Keep a local Ray on loopback.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: run test setup ui docs docs-build lint clean

run: $(STAMP)  ## set up, then run the pipeline (dvc repro) and say where the results are
	$(BIN)/dvc repro
	$(BIN)/runyard summary

test: system $(STAMP)  ## set up (system packages included), then run the whole test suite
	$(BIN)/pytest

# The system packages only the tests need (chromium, postgresql, kubectl...): installed with
# apt as root, else one line says what is missing. `make run` does not need them.
.PHONY: system
system:
	scripts/system-deps.sh

setup: $(STAMP)

# Everything with uv, which resolves and installs in a fraction of pip's time
# (docs/benchmarks.md, "Set-up"). uv does not read pip's configuration: where pip's
# find-links name a folder of wheels (the pinned torch's CPU build on this machine's
# disk, not a multi-GB CUDA download), uv is given it too.
FIND_LINKS := $(or $(PIP_FIND_LINKS),$(shell $(PY) -m pip config get global.find-links 2>/dev/null))
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python $(addprefix --find-links ,$(FIND_LINKS)) -e ".[dev]"
	touch $@

ui: $(STAMP)  ## the MLflow UI on the embedded store: http://127.0.0.1:5000
	$(BIN)/runyard ui --port 5000

# The docs site (docs/, mkdocs.yml); its reference pages are written from the code.
docs: $(STAMP)  ## serve the docs site on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

docs-build: $(STAMP)  ## build the docs site into site/ (warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

lint: $(STAMP)
	$(BIN)/ruff check platform tests

clean:  ## remove generated outputs (keeps the venv)
	rm -rf data models metrics plots mlruns/mlflow.db mlruns/artifacts .runyard dvc.lock
