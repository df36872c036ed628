# fsx: `make demo` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.fsx-installed

.PHONY: install demo test test-fast bench docs lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,weights,export,cluster]"
	touch $(STAMP)

# The main job: standard pretraining on letters fold 1, then 5-way 5-shot adaptation
# evaluated at several milestones over 5 sampled tasks (mean +- 95% CI).
demo: install
	$(BIN)/fsx pretrain experiment=demo
	$(BIN)/fsx eval experiment=demo checkpoint=latest

# Two test processes (pytest-xdist), each test file in one of them, each with one torch thread
# (tests/conftest.py): on 2 cores that beats one process with two threads. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

bench: install
	$(BIN)/python bench/run.py

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or page.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check fsx tests bench experiments

clean:
	rm -rf outputs multirun mlruns mlartifacts mlflow.db .pytest_cache site
