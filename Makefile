# The two commands of the README: `make demo` and `make test`. Each sets up .venv
# from nothing on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo quality paper test lint bench bench-peers soak data-real redis tools protos clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

protos: $(STAMP)
	$(BIN)/python services/codegen.py

redis:
	@bash deploy/ensure-redis.sh

# promtool, prometheus, docker-compose and kustomize for the deploy tests
tools:
	@bash deploy/ensure-tools.sh

demo: $(STAMP) redis
	$(BIN)/camseg demo --out demo-out

# the full segmentation-quality run: all six architectures, more ROIs and epochs, three seeds, each
# architecture retrained on filtered images (hours on two cores)
quality: $(STAMP) redis
	$(BIN)/camseg demo --profile quality --out quality-out

# the paper's comparison alone: all six architectures, where their heatmaps sit, and the
# filtered retraining of each (no recipes)
paper: $(STAMP) redis
	$(BIN)/camseg demo --profile paper --out paper-out --no-service

# a bounded soak (not part of `make test`): the server, a worker and dicom-listen under steady
# mixed load for SOAK_SECONDS; growth of memory, open files and threads, statuses, jobs
soak: $(STAMP) redis
	$(BIN)/python bench/soak.py --seconds $(or $(SOAK_SECONDS),180)

test: $(STAMP) redis tools
	PATH="$(CURDIR)/.tools/node_modules/.bin:$$PATH" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check camseg services jobs tests bench deploy
	$(BIN)/mypy
	$(BIN)/lint-imports

data-real: $(STAMP)
	$(BIN)/camseg data real --out data/real --overwrite

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	# the converters bench/onnxgraph_compare.py measures camseg's against, without their
	# torchvision dependency: PyPI's torchvision is a CUDA build that cannot load beside the CPU torch
	$(BIN)/python -m pip install -q --no-deps onnx2torch==1.5.15 onnx2pytorch==0.6.0
	@rm -f $(VENV)/.bench-*
	@touch $@

bench: $(BENCH_STAMP) redis
	$(BIN)/python bench/cam_bench.py
	$(BIN)/python bench/serve_bench.py
	$(BIN)/python bench/imported_bench.py
	$(BIN)/python bench/onnxgraph_compare.py
	$(BIN)/python bench/whole_bench.py

# camseg serve beside KServe, MLServer and LitServe (each in its own venv under .venv-peers/, made
# on first use from the package registry) and bare ONNX Runtime; PEERS_SECONDS a point (default 5)
bench-peers: $(BENCH_STAMP) redis
	$(BIN)/python bench/peers.py --seconds $(or $(PEERS_SECONDS),5)

clean:
	rm -rf $(VENV) .venv-peers .tools demo-out quality-out paper-out .pytest_cache .mypy_cache .ruff_cache
