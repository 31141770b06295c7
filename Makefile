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

.PHONY: demo test lint bench clean-demo wheelhouse

$(STAMP): pyproject.toml Makefile
	@# open3d (points) loads libusb-1.0: install it where we may (root with apt), else say so
	@ldconfig -p 2>/dev/null | grep -q 'libusb-1\.0' || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || \
			{ apt-get update -q >/dev/null 2>&1 && \
				apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1; } || \
			echo "note: could not install libusb-1.0 (open3d, the points modality, needs it)"; \
		else echo "note: open3d (the points modality) needs libusb-1.0;" \
			"install it (Debian/Ubuntu: sudo apt-get install libusb-1.0-0)"; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet "$(TORCH)"
	# deepspeed builds from source and imports torch in setup.py: build it against the torch above.
	$(PY) -m pip install --quiet --no-build-isolation $(DEEPSPEED)
	$(PY) -m pip install --quiet -e ".[dev,fast]"
	touch $(STAMP)

# The demo: an fMRI cohort whose label a JEPA can learn (the positive control at demo size: 80
# synthetic subjects as 4D NIfTI + atlas + participants.tsv, generated once) -> shards ->
# pretraining on all 240 windows, unlabelled (resumes if interrupted) -> a linear probe trained on
# 8 labelled subjects, tested on the other 72, beside the same encoder at random init.
DEMO := demo_data/fmri_control
demo: $(STAMP)
	@[ -f $(DEMO)/raw/control.json ] || $(PY) -m modalities.fmri.control $(DEMO)/raw --subjects 80
	$(PY) -m pipelines.ingest fmri --input $(DEMO)/raw/bids --atlas $(DEMO)/raw/atlas.nii.gz \
		--window 128 --participants-column field --output $(DEMO)/data
	$(PY) -m engine.train --data $(DEMO)/data --out runs/demo \
		--config engine/configs/fmri_control.yaml --resume auto train.progress=true
	$(PY) -m engine.probe --checkpoint runs/demo --data $(DEMO)/data --label field \
		--labels 8 --folds 10 --pool meanstd --baseline

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

# Wheels for a GPU machine without network whose Python (WHEEL_PY) already has torch: DeepSpeed as
# installed here (built as pure Python; its ops are JIT-built where used, and the engine uses
# none) and what it needs beyond such a machine's usual packages.
# `python benchmarks/gpu_train.py --wheelhouse wheelhouse` installs them there offline.
WHEEL_PY ?= 3.12
wheelhouse: $(STAMP)
	rm -rf wheelhouse && mkdir -p wheelhouse
	DS_BUILD_OPS=0 $(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w wheelhouse \
		"deepspeed==$$($(PY) -c 'from importlib.metadata import version; print(version("deepspeed"))')"
	$(PY) -m pip download --quiet --only-binary=:all: --python-version $(WHEEL_PY) \
		--implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux_2_28_x86_64 -d wheelhouse \
		hjson pydantic einops msgpack py-cpuinfo nvidia-ml-py ninja
