# Two entry points: `make demo` (main job on built-in demo data) and `make test` (whole suite).
# Both create .venv and install everything on first use.
#
# TORCH picks the torch build. The default pin is the CPU wheel this kind of machine keeps on
# disk; on a CUDA box run e.g. `make demo TORCH=torch` to let pip choose the CUDA build.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# deepspeed's requirement, read from pyproject.toml (one place pins it)
DEEPSPEED := $(shell grep -o '"deepspeed[^"]*"' pyproject.toml)

.PHONY: demo test lint bench clean-demo

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "$(TORCH)"
	# deepspeed builds from source and imports torch in setup.py: build it against the torch above.
	$(PY) -m pip install --quiet --no-build-isolation $(DEEPSPEED)
	$(PY) -m pip install --quiet -e ".[dev,fast]"
	touch $(STAMP)

# The demo cohort (12 synthetic subjects, generated once and cached) -> shards -> a short
# pretraining run that resumes if interrupted -> a linear probe of the subjects' group label.
demo: $(STAMP)
	$(PY) -m pipelines.ingest fmri --atlas builtin:100 --participants-column group \
		--output demo_data/fmri
	$(PY) -m engine.train --data demo_data/fmri --out runs/demo \
		--config engine/configs/fmri_demo.yaml --resume auto
	$(PY) -m engine.probe --checkpoint runs/demo --data demo_data/fmri --label group --baseline

test: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest tests

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/ingest_fmri.py
	$(PY) -m kernels.bench
	$(PY) benchmarks/train_fmri.py
