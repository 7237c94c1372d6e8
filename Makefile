# Every target calls `python -m pipeline <stage>`; the Makefile only adds the virtual environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.yaml
ARGS ?=
# `make test` runs on this many pytest-xdist workers (tests/conftest.py groups the files); 0 runs it in
# one process. `make test-all` stays in one process: its fault and multi-worker tests time and kill
# processes of their own.
TEST_WORKERS ?= 2
CLIP ?=
# The stages keep TensorFlow's start-up logs quiet themselves; ARGS=--verbose shows them.

.PHONY: install run data preview train evaluate baselines ablate export clip report bench test test-all check-mediapipe clean

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
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -m "" $(ARGS)

# MediaPipe's ObjectDetector task loads the exported detector (export/model_detection.tflite) and must find
# a vehicle in a KITTI frame. mediapipe needs opencv-contrib, which clashes with our headless OpenCV, so it
# gets a venv of its own; the check imports nothing from the project.
MP_VENV := .venv-mediapipe
MP_STAMP := $(MP_VENV)/.installed
EXPERIMENT = $(shell sed -n 's/^experiment: *//p' $(CONFIG))
DETECTOR ?= runs/$(EXPERIMENT)/export/model_detection.tflite
FRAME ?= tests/fixtures/kitti/training/image_2/000001.png
FRAME_LABELS ?= $(patsubst %.png,%.txt,$(subst image_2,label_2,$(FRAME)))

$(MP_STAMP): tools/requirements-mediapipe.txt
	test -x $(MP_VENV)/bin/python || $(PYTHON) -m venv $(MP_VENV)
	$(MP_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MP_VENV)/bin/python -m pip install --quiet -r tools/requirements-mediapipe.txt
	touch $(MP_STAMP)

check-mediapipe: $(MP_STAMP)
	$(MP_VENV)/bin/python tools/check_mediapipe.py --model $(DETECTOR) --image $(FRAME) \
		$(if $(wildcard $(FRAME_LABELS)),--labels $(FRAME_LABELS)) $(ARGS)

clean:
	rm -rf runs .pytest_cache
