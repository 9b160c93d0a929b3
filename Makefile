# Phi-3.5-vision fine-tuning benchmark harness. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-cpu
PYTEST_ARGS ?=

.PHONY: help setup setup-gpu test lint bench-micro clean

help:
	@echo "make setup      create $(VENV) and install the CPU stack (idempotent)"
	@echo "make setup-gpu  install the GPU extra (flash-attn) into $(VENV) on a CUDA machine"
	@echo "make test       run the test suite (runs setup first)"
	@echo "make lint       ruff over the project"
	@echo "make bench-micro  data-pipeline micro-benchmarks (pytest-benchmark, one core)"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# On a GPU machine: the PyPI build of torch for Linux x86-64 is the CUDA one; flash-attn compiles against it.
setup-gpu: $(STAMP)
	$(PY) -m pip install --quiet ninja packaging
	$(PY) -m pip install --no-build-isolation -e '.[gpu]'

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench-micro: setup
	$(PY) -m pytest benchmarks -q -p no:cacheprovider --benchmark-only --benchmark-columns=mean,stddev,rounds -s

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
