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

.PHONY: demo test lint bench clean-demo

$(STAMP): pyproject.toml Makefile
	@bash scripts/ensure_system_deps.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "$(TORCH)"
	# deepspeed builds from source and imports torch in setup.py: build it against the torch above.
	$(PY) -m pip install --quiet --no-build-isolation deepspeed
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m pipelines.ingest fmri --output demo_data/fmri

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest tests

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/ingest_fmri.py
