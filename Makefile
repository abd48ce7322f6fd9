# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CLI := $(VENV)/bin/exemplar-vae
TORCH_VERSION ?= 2.13.0
FASHION_DIR := /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo
# The demo budget: a small Exemplar VAE that trains, evaluates and draws in a few minutes on 2 cores.
DEMO_TRAIN := --dataset fashion-mnist --prior exemplar --train-size 10000 --epochs 8 --warmup 4 --knn 10 --seed 1
DEMO_EVAL := --limit 500 --samples 1000

.PHONY: demo test setup data bench gpu-check lint clean

# What setup installs: the package (editable) with these extras of pyproject.toml. `test` brings pytest,
# ruff, mypy and every CPU extra (plots, tsne, digits, omniglot, tensorboard) that the tests, the linters
# and the demo use.
EXTRAS ?= test
comma := ,
INSTALLED := $(VENV)/.installed-$(subst $(comma),+,$(EXTRAS))

# Reinstalls when pyproject.toml (dependencies, extras), this file (TORCH_VERSION) or EXTRAS changes.
$(INSTALLED): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk (an unpinned torch would pull a CUDA build)
	$(PIP) install -q torch==$(TORCH_VERSION)
	# the pin again, so resolving the package's requirements can never replace that torch
	$(PIP) install -q -e '.[$(EXTRAS)]' torch==$(TORCH_VERSION)
	touch $@

setup: $(INSTALLED)

data:
	@if [ -f $(FASHION_DIR)/train-images-idx3-ubyte.gz ]; then \
		echo "Fashion-MNIST found in $(FASHION_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) \
		|| echo "apt could not install dataset-fashion-mnist; the loader will try to download it"; \
	else \
		echo "no Debian package manager here: the loader will download Fashion-MNIST (checksummed) or ask for --data-dir"; \
	fi

demo: setup data
	rm -rf $(DEMO_DIR)
	$(CLI) train $(DEMO_TRAIN) --out $(DEMO_DIR)
	$(CLI) evaluate $(DEMO_DIR) $(DEMO_EVAL)
	$(CLI) report $(DEMO_DIR)
	@echo "demo run folder: $(DEMO_DIR) (report.md, samples.png, exemplars.png, curves.png)"

test: setup data
	$(PY) -m pytest -q

bench: setup data
	$(PY) benchmarks/bench_train_eval.py --write

# on a CUDA machine with this venv: CUDA tests, then both priors trained and evaluated (results/gpu_check.md)
gpu-check: setup data
	$(PY) benchmarks/gpu_check.py --out results --minutes 1.5

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks experiments
	$(VENV)/bin/ruff format --check src tests benchmarks experiments
	$(VENV)/bin/mypy src benchmarks experiments --ignore-missing-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
