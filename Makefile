# Every target calls `python -m pipeline <stage>`; the Makefile only adds the virtual environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.yaml
ARGS ?=
CLIP ?=
# The stages keep TensorFlow's start-up logs quiet themselves; ARGS=--verbose shows them.

.PHONY: install run data preview train evaluate baselines ablate export clip report bench test test-all clean

install: $(STAMP)

# Installs once; reinstalls only when the requirements change.
$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m pipeline run --config $(CONFIG) $(ARGS)

data preview train evaluate baselines ablate export report bench: $(STAMP)
	$(PY) -m pipeline $@ --config $(CONFIG) $(ARGS)

clip: $(STAMP)
	$(PY) -m pipeline clip --config $(CONFIG) $(if $(CLIP),--input $(CLIP)) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "" $(ARGS)

clean:
	rm -rf runs .pytest_cache
