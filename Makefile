# Phi-3.5-vision fine-tuning benchmark harness. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup setup-gpu wheelhouse carry test test-fast test-gpu test-slurm doctor lint bench-micro bench-cli clean bench-cpu bench-a100 bench-v100 bench-h100 \
	bench-gpu-smoke bench-engines-cpu bench-engines-h200 bench-engines-a100 gpu-check plan-cpu plan-a100 plan-v100 plan-h100 plan-gpu-smoke report regress regress-baseline \
	test-gate test-estimator test-tracking estimate-guide tune-cpu tune-a100 tune-h100 tune-h200 tune-v100 tune-predict reproduce-docvqa reproduce-hateful-memes reproduce-nlvr2 reproduce-ucf101

help:
	@echo "make setup      create $(VENV) and install the CPU stack (idempotent)"
	@echo "                CUDA=cu126|cu128|cu130 (torch of that CUDA), TORCH=system (keep the machine's torch),"
	@echo "                WHEELS=DIR (install from a folder of wheels, no index)"
	@echo "make setup-gpu  install flash-attn into $(VENV) on a CUDA machine (FLASH_ATTN_CUDA_ARCHS, FLASH_ATTN_WHEEL)"
	@echo "make wheelhouse a folder of wheels for a machine without network (WHEELHOUSE_PYTHON=3.12, CUDA=...)"
	@echo "make carry      what the stock GPU image lacks, as wheels under 64 MiB, in build/carry (install/carry-stock-gpu.txt)"
	@echo "make test       the whole CPU suite over both cores (runs setup first; the GPU tier is skipped without CUDA)"
	@echo "make test-fast  the unit tier (no cells, torchrun or grids; under 2 minutes): run it before every commit"
	@echo "make test-gpu   the GPU tier only (pytest -m gpu): attention backends, memory, MFU, QLoRA, DeepSpeed/NCCL"
	@echo "make test-estimator  the memory estimator against real CPU steps of the wide-2l preset (a few minutes)"
	@echo "make test-tracking   the trackers against a real MLflow server on 127.0.0.1 (CI runs it; ~1.5 minutes)"
	@echo "make test-slurm the SLURM tier (pytest -m slurm) on a real 2-node cluster it starts and stops (tests/slurm/cluster.sh)"
	@echo "make doctor     what this machine can run (GPUs, kernels, packages, cells of the shipped grids)"
	@echo "make lint       ruff over the project"
	@echo "make bench-micro  data-pipeline micro-benchmarks (pytest-benchmark, one core)"
	@echo "make bench-cli  how long --help, plan, report and compare take (runs the cpu_smoke grid first if needed)"
	@echo "make bench-cpu  the CPU smoke grid (tiny preset, every strategy): the main job on any machine"
	@echo "make regress    the regression gate: regress_cpu in 3 interleaved passes against results/baselines"
	@echo "                (regress-baseline refreshes it; test-gate proves it passes under load and fails on a 2x slowdown)"
	@echo "make reproduce-docvqa | reproduce-hateful-memes | reproduce-nlvr2 | reproduce-ucf101"
	@echo "                MODEL=dir DATA=dir RESULTS=dir REPEATS=N; PROFILE=tiny on a CPU with the synthetic twins"
	@echo "make estimate-guide  predicted peak memory of the guide's speed grids beside the documented peaks (results/estimates)"
	@echo "make report     markdown reports of everything under results/runs (into reports/)"
	@echo "make bench-gpu-smoke  the full preset on this machine's GPUs (1-8, any NVIDIA), every strategy, a few steps"
	@echo "make gpu-check  doctor + the GPU tier + gpu_smoke + its report, logs in build/gpu-check (scripts/gpu_check.sh)"
	@echo "make bench-a100 | bench-v100 | bench-h100   the guide's GPU speed grids (plan-* to preview)"
	@echo "make bench-engines-cpu | bench-engines-h200 | bench-engines-a100   every engine (ddp, zero1-3, fsdp2) x"
	@echo "                activation checkpointing (all, every-2, none) side by side, with the report's engines section"
	@echo "                RUN_ARGS='--filter strategy=lora' etc. are passed to 'python -m harness run'"
	@echo "make cost-guide what each documented configuration of the guide costs (results/prices.yaml): reports/cost/guide.md"
	@echo "make tune-cpu    harness tune on this CPU (tune_cpu grid, an 8 MiB budget): recipe vs the fastest config that fits"
	@echo "make tune-a100 | tune-h100 | tune-v100 | tune-h200   the guide's speed grids tuned on that GPU (trials run here)"
	@echo "make tune-predict  tune --predict-only of a100_speed for A100 and H200 (no GPU; results/estimates/tune_*)"
	@echo "                TUNE_ARGS='--trials 5 --budget-s 3600' etc. are passed to 'python -m harness tune'"

setup: $(STAMP)

# Install choices (README, "Installing"): CUDA=cu126|cu128|cu130 takes torch (the pinned version) from the PyTorch
# wheel index of that CUDA (cu126 for V100 and drivers older than R580); TORCH=system builds the venv on the
# interpreter's own site packages and keeps the torch it finds there (NGC and cluster images, module systems);
# WHEELS=DIR installs from a folder of wheels (make wheelhouse) without any index. The CPU default is unchanged.
# the choice made when the venv was set up is kept for every later target (a plain `make test` after
# `make setup TORCH=system` must not reinstall torch from the CPU pin)
-include $(VENV)/install.mk
CUDA   ?=
TORCH  ?=
WHEELS ?=
TORCH_PIN   := $(shell sed -n 's/^torch==//p' constraints.txt)
PIP_SOURCE  := $(if $(WHEELS),--no-index --find-links $(WHEELS))
CONSTRAINTS := $(if $(filter system,$(TORCH)),$(VENV)/constraints-system-torch.txt,constraints.txt)

$(STAMP): pyproject.toml constraints.txt
	@case "$(CUDA)" in ""|cu126|cu128|cu130) ;; *) echo "CUDA=$(CUDA): give cu126, cu128 or cu130" >&2; exit 2;; esac
	@case "$(TORCH)" in ""|system) ;; *) echo "TORCH=$(TORCH): the only choice is TORCH=system" >&2; exit 2;; esac
	@if [ -n "$(CUDA)" ] && [ "$(TORCH)" = system ]; then echo "CUDA= and TORCH=system exclude each other" >&2; exit 2; fi
	test -x $(PY) || $(PYTHON) -m venv $(if $(filter system,$(TORCH)),--system-site-packages) $(VENV)
	$(if $(WHEELS),,$(PY) -m pip install --quiet --upgrade pip)
	$(if $(filter system,$(TORCH)),@version=$$($(PY) -c "import torch; print(torch.__version__.split('+')[0])") || \
	  { echo "TORCH=system: $(PYTHON) has no torch in its site packages; drop TORCH=system to install one" >&2; exit 2; }; \
	  grep -v '^torch==' constraints.txt > $(CONSTRAINTS); echo "torch==$$version" >> $(CONSTRAINTS); \
	  echo "TORCH=system: keeping torch $$version")
	$(if $(CUDA),$(PY) -m pip install --quiet $(PIP_SOURCE) $(if $(WHEELS),,--index-url https://download.pytorch.org/whl/$(CUDA)) "torch==$(TORCH_PIN)")
	$(PY) -m pip install --quiet $(PIP_SOURCE) -c $(CONSTRAINTS) -e '.[dev,track]'
	printf 'CUDA ?= %s\nTORCH ?= %s\nWHEELS ?= %s\n' "$(CUDA)" "$(TORCH)" "$(WHEELS)" > $(VENV)/install.mk
	touch $(STAMP)

# A folder of wheels for a machine without network (WHEELHOUSE_PYTHON: its Python version, e.g. 3.12), made here:
# every dependency of the project for that Python and Linux x86-64, torch from the CPU or CUDA index; deepspeed
# (an sdist) is built into a wheel. `make setup WHEELS=$(WHEELHOUSE)` installs from it.
WHEELHOUSE ?= build/wheelhouse
WHEELHOUSE_PYTHON ?= 3.12
wheelhouse: $(STAMP)
	mkdir -p $(WHEELHOUSE)
	$(PY) -m pip download --quiet --dest $(WHEELHOUSE) --only-binary=:all: --python-version $(WHEELHOUSE_PYTHON) \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform linux_x86_64 \
	  --platform any $(if $(CUDA),--extra-index-url https://download.pytorch.org/whl/$(CUDA)) \
	  -c constraints.txt $$(grep -v '^deepspeed==' constraints.txt | grep -v '^#' | grep -v '^$$')
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE) -c constraints.txt deepspeed
	@du -sh $(WHEELHOUSE); ls $(WHEELHOUSE) | wc -l

# What the stock GPU image lacks (install/carry-stock-gpu.txt), as wheels in one folder under 64 MiB that travels with
# a checkout (scripts/gpu_check.sh installs it with CARRY=DIR); bitsandbytes keeps CUDA $(CARRY_CUDA_MAJOR)'s kernels only.
CARRY ?= build/carry
CARRY_PYTHON ?= 3.12
CARRY_CUDA_MAJOR ?= 13
carry: $(STAMP)
	$(PY) scripts/carry.py --out $(CARRY) --python $(CARRY_PYTHON) --cuda-major $(CARRY_CUDA_MAJOR)

# On a GPU machine: flash-attn compiles against the installed torch (its setup.py imports wheel, ninja and packaging;
# FLASH_ATTN_CUDA_ARCHS limits the build to this machine's GPUs, e.g. "80;90"; a prebuilt wheel that matches
# torch, CUDA, Python and the C++ ABI skips the build: FLASH_ATTN_WHEEL=path).
FLASH_ATTN_VERSION ?= 2.8.3
FLASH_ATTN_CUDA_ARCHS ?=
FLASH_ATTN_WHEEL ?=
setup-gpu: $(STAMP)
	$(PY) -m pip install --quiet $(PIP_SOURCE) wheel ninja packaging psutil
	$(if $(FLASH_ATTN_WHEEL),$(PY) -m pip install $(FLASH_ATTN_WHEEL),\
	  $(if $(FLASH_ATTN_CUDA_ARCHS),FLASH_ATTN_CUDA_ARCHS="$(FLASH_ATTN_CUDA_ARCHS)") \
	  $(PY) -m pip install $(PIP_SOURCE) --no-build-isolation "flash-attn==$(FLASH_ATTN_VERSION)")

# Tests run in parallel over the machine's cores (pytest-xdist; TEST_WORKERS=0 runs them in one process). `slow`
# tests (cells, torchrun, runner end to end) are the ones `test-fast` leaves out; the GPU and gate tiers have their own
# targets. --durations names the slowest tests after every run.
TEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)
test: setup
	$(PY) -m pytest -q $(XDIST) --durations=10 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow and not gpu and not gate" --durations=10 $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# The SLURM tier: a real cluster on this machine (slurm-wlm 22.05 from Debian, munge, slurmdbd + MariaDB, nodes n1 and
# n2 with their own hostnames, loopback only), started for the tests and stopped after them (SLURM_KEEP=1 keeps it).
SLURM_TEST_DIR ?= $(CURDIR)/build/slurm
test-slurm: setup
	SLURM_TEST_DIR=$(SLURM_TEST_DIR) tests/slurm/cluster.sh start
	SLURM_TEST_DIR=$(SLURM_TEST_DIR) SLURM_CONF=$(SLURM_TEST_DIR)/slurm.conf $(PY) -m pytest -q -rs --durations=10 -m slurm tests/slurm \
		$(PYTEST_ARGS); status=$$?; [ -n "$$SLURM_KEEP" ] || SLURM_TEST_DIR=$(SLURM_TEST_DIR) tests/slurm/cluster.sh stop; \
		exit $$status

doctor: setup
	$(PY) -m harness doctor

bench-micro: setup
	$(PY) -m pytest benchmarks/test_data_pipeline.py -q -p no:cacheprovider --benchmark-only --benchmark-columns=mean,stddev,rounds -s

# The CLI's response times (benchmarks/test_cli.py): each command in a fresh interpreter, 5 timed runs after a warm-up.
# `report` reads the cpu_smoke rows, so the grid runs first when they are not there yet (a few minutes, once).
SMOKE_ROWS := results/runs/cpu_smoke/cpu/rows.jsonl
$(SMOKE_ROWS): | $(STAMP)
	$(HARNESS) run cpu_smoke
bench-cli: setup $(SMOKE_ROWS)
	$(PY) -m pytest benchmarks/test_cli.py -q -p no:cacheprovider --benchmark-only --benchmark-columns=mean,min,max,stddev,rounds -s

RUN_ARGS ?=
HARNESS := $(PY) -m harness

bench-cpu: setup
	$(HARNESS) run cpu_smoke $(RUN_ARGS); status=$$?; $(HARNESS) report results/runs/cpu_smoke && exit $$status
bench-a100: setup
	$(HARNESS) run a100_speed $(RUN_ARGS)
bench-v100: setup
	$(HARNESS) run v100_speed $(RUN_ARGS)
bench-h100: setup
	$(HARNESS) run h100_speed $(RUN_ARGS)
bench-gpu-smoke: setup
	$(HARNESS) run gpu_smoke $(RUN_ARGS)
bench-engines-cpu: setup
	$(HARNESS) run engines_cpu $(RUN_ARGS); status=$$?; $(HARNESS) report results/runs/engines_cpu && exit $$status
bench-engines-h200: setup
	$(HARNESS) run engines_h200 $(RUN_ARGS); status=$$?; $(HARNESS) report results/runs/engines_h200 && exit $$status
bench-engines-a100: setup
	$(HARNESS) run engines_a100 $(RUN_ARGS); status=$$?; $(HARNESS) report results/runs/engines_a100 && exit $$status

# harness tune: the fastest configuration of each cell that fits (engine, checkpointing, micro-batch, attention),
# predicted by the estimator and a stated step-time model, confirmed by short trials stored as ordinary cells; writes
# matrices/tuned/<grid>-<gpu>.yaml and reports/tune/<grid>-<gpu>.md
tune-cpu: setup
	$(HARNESS) tune tune_cpu --memory-gib 0.008 $(TUNE_ARGS)
tune-a100: setup
	$(HARNESS) tune a100_speed $(TUNE_ARGS)
tune-h100: setup
	$(HARNESS) tune h100_speed $(TUNE_ARGS)
tune-v100: setup
	$(HARNESS) tune v100_speed $(TUNE_ARGS)
tune-h200: setup
	$(HARNESS) tune a100_speed --gpu H200 $(TUNE_ARGS)
# the committed predictions (no GPU; the 1-node flash-attention cells; a few tens of minutes on a CPU, the second GPU
# reuses the first's traces)
TUNE_PREDICT = a100_speed --predict-only --filter nodes=1 --filter attention=flash_attention_2 \
	--checkpointing all --checkpointing none --max-micro-batch 4
tune-predict: setup
	$(HARNESS) tune $(TUNE_PREDICT) --gpu A100 --report results/estimates/tune_a100_speed-A100.md
	$(HARNESS) tune $(TUNE_PREDICT) --gpu H200 --report results/estimates/tune_a100_speed-H200.md
gpu-check: setup
	PYTHON=$(PY) scripts/gpu_check.sh build/gpu-check

report: setup
	$(HARNESS) report results/runs

# The guide's documented configurations at sourced GPU-hour prices (results/prices.yaml): reports/cost/guide.md
cost-guide: setup
	$(HARNESS) cost

# The regression gate (CI runs it after the tests): the regress_cpu cells (every strategy, one thread, 32 measured
# steps) run as REGRESS_PASSES interleaved passes and compared against results/baselines: each cell normalised to the
# full cell of its own pass, the median over passes judged (a burst of load moves one pass, not the median).
REGRESS_PASSES ?= 3
REGRESS_GROUPS = $(foreach p,$(shell seq 1 $(REGRESS_PASSES)),$(1)/regress_cpu/pass$(p))
regress: setup
	rm -rf build/regress
	for p in $$(seq 1 $(REGRESS_PASSES)); do $(HARNESS) run regress_cpu --results build/regress --group pass$$p || exit 1; done
	$(HARNESS) compare results/baselines $(call REGRESS_GROUPS,build/regress) --rules results/baselines/ci_rules.yaml \
		--out build/regress/compare.md

# Refresh the committed baseline (after a deliberate change, on an idle machine), then commit results/baselines.
regress-baseline: setup
	rm -rf build/regress-baseline
	for p in $$(seq 1 $(REGRESS_PASSES)); do $(HARNESS) run regress_cpu --results build/regress-baseline --group pass$$p || exit 1; done
	$(HARNESS) baseline $(call REGRESS_GROUPS,build/regress-baseline) --root results/baselines --replace

# The gate's own proof (CI runs it after the gate): unchanged code under a CPU burner passes, a 2x slowdown of one
# strategy fails (tests/gate, a few minutes; not part of `make test`).
test-gate: setup
	$(PY) -m pytest -q -rP -m gate tests/gate $(PYTEST_ARGS)

# The memory estimator against real CPU steps at real widths (the wide-2l preset: LoRA and QLoRA, with checkpointing;
# a few minutes; CI runs it; not part of `make test`).
test-estimator: setup
	$(PY) -m pytest -q -rA -m estimator tests/core/test_estimate.py $(PYTEST_ARGS)

# Experiment tracking against a real MLflow server on 127.0.0.1 (started and stopped by the test: a grid whose server
# stops after its first cell, then `harness track` completes it; ~1.5 minutes; CI runs it; not part of `make test`).
test-tracking: setup
	$(PY) -m pytest -q -rA -m tracking tests/harness/test_tracking.py $(PYTEST_ARGS)

# Accuracy reproductions: MODEL=<checkpoint dir> DATA=<dataset dir or cache> RESULTS=<dir> REPEATS=<N seeds>;
# PROFILE=tiny runs the same grids on a CPU with the tiny preset and the synthetic twins; KEEP_MODEL=1 keeps each
# cell's trained model / adapter (cells/<run_id>/model; the report lists them; `harness export` writes one out).
RESULTS ?= results/runs
REPEATS ?= 1
PROFILE ?=
KEEP_MODEL ?=
define reproduce
	MODEL="$(MODEL)" DATA="$(DATA)" $(HARNESS) run $(1) $(if $(PROFILE),--profile $(PROFILE)) --repeats $(REPEATS) \
		--results $(RESULTS) $(if $(filter 1,$(KEEP_MODEL)),--keep-model) $(RUN_ARGS); status=$$?; \
	if [ -d $(RESULTS)/$(1) ]; then $(HARNESS) report $(RESULTS)/$(1) || exit 1; fi; exit $$status
endef
reproduce-docvqa: setup
	$(call reproduce,docvqa_accuracy)
reproduce-hateful-memes: setup
	$(call reproduce,hateful_memes_accuracy)
reproduce-nlvr2: setup
	$(call reproduce,nlvr2_accuracy)
reproduce-ucf101: setup
	$(call reproduce,ucf101_accuracy)

plan-cpu: setup
	$(HARNESS) plan cpu_smoke
ENGINE_GPUS = --gpu A100 --gpu H100 --gpu H200 --gpu V100 --gpu RTX8000
# Predicted peak memory of the guide's speed grids beside the documented peaks (results/estimates/, committed): the
# real 4.15B preset traced with fake tensors, a few minutes on a CPU, no GPU; and the engines' full fine-tuning cells
# (README: which engine for which GPU memory).
estimate-guide: setup
	$(HARNESS) estimate a100_speed --gpu A100 --gpu H100 --gpu V100 --out results/estimates/a100_speed.md
	$(HARNESS) estimate v100_speed --gpu V100 --gpu A100 --out results/estimates/v100_speed.md
	$(HARNESS) estimate engines_a100 --filter strategy=full --filter activation_checkpointing=all $(ENGINE_GPUS) \
		--out results/estimates/engines_full_8gpu.md
	$(HARNESS) estimate engines_a100 --filter strategy=full --filter activation_checkpointing=none $(ENGINE_GPUS) \
		--out results/estimates/engines_full_8gpu_no_ckpt.md

plan-a100: setup
	$(HARNESS) plan a100_speed
plan-v100: setup
	$(HARNESS) plan v100_speed
plan-h100: setup
	$(HARNESS) plan h100_speed
plan-gpu-smoke: setup
	$(HARNESS) plan gpu_smoke

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
