# fsx: `make demo` and `make test` install into .venv when needed, then run.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.fsx-installed

# fsx's own modules compiled ahead (stale ones only; a second or two): where PYTHONDONTWRITEBYTECODE
# is set, as on this project's machines, every fsx process would otherwise compile them again (measured: about
# 1 s of the 7 s an fsx process took to import on 2 busy cores).
PYC     = -m compileall -q fsx

.PHONY: install demo test test-fast test-oldest gpu-wheels gpu-check bench docs lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e ".[test,weights,export,cluster]" "torch>=2.14" "torchvision>=0.29"
	@# pip compiles the installed files in one process; compileall -j 0 on both cores: 79 s instead of
	@# 95 s for the whole install on 2 cores (2026-12-08). Files for other Pythons fail to compile, as with pip.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

# The main job: standard pretraining on letters fold 1, then 5-way 5-shot adaptation
# evaluated at several milestones over 5 sampled tasks (mean +- 95% CI).
demo: install
	$(BIN)/python $(PYC)
	$(BIN)/fsx pretrain experiment=demo
	$(BIN)/fsx eval experiment=demo checkpoint=latest

# Two test processes (pytest-xdist), each test file in one of them, each with one torch thread
# (tests/conftest.py): on 2 cores that beats one process with two threads. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python $(PYC)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

test-fast: install
	$(BIN)/python $(PYC)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# The oldest torch and torchvision fsx supports (pyproject.toml's lower bounds), in a second
# environment, running the tests that need no training (see docs/development.md).
OLDEST_TORCH ?= torch==2.4.1 torchvision==0.19.1
OLDEST       ?= .venv-oldest
$(OLDEST)/.fsx-installed: pyproject.toml
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet $(OLDEST_TORCH) -e ".[test,weights,export]"
	touch $@

test-oldest: $(OLDEST)/.fsx-installed
	$(OLDEST)/bin/python $(PYC)
	$(OLDEST)/bin/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
	$(OLDEST)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# A lent GPU machine has its own torch and no network: gpu-wheels (here) fills .whl/ with the
# wheels its image lacks, gpu-check (there, with .whl carried) installs them and runs fsx's
# CUDA checks into $(OUT) (gpu/check.sh; docs/development.md).
gpu-wheels: install
	$(BIN)/python gpu/wheels.py

OUT ?= gpu-check
gpu-check:
	OUT=$(OUT) bash gpu/check.sh

bench: install
	$(BIN)/python bench/run.py

# The documentation site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or page.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: install
	$(BIN)/ruff check fsx tests bench experiments gpu docs/hooks.py

clean:
	rm -rf outputs multirun mlruns mlartifacts mlflow.db .pytest_cache site gpu-check
