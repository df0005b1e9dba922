# Developer entry points. `make setup` is idempotent (stamps in .venv/.setup/) and fast once done.
#   COMFYUI_DIR=/path/to/ComfyUI  use an existing ComfyUI instead of the provisioned .comfyui/ComfyUI
#   PORT=8188                     port for `make serve`
# The repo is symlinked into <ComfyUI>/custom_nodes/comfyui-coat. `comfy-test lint` refuses symlinked packs,
# so lint the repository itself: .venv/bin/comfy-test lint .
PYTHON      ?= python3.11
VENV        := .venv
VPY         := $(VENV)/bin/python
COMFY       := $(or $(COMFYUI_DIR),.comfyui/ComfyUI)
FRONTEND    := $(CURDIR)/.comfyui/frontend
PORT        ?= 8188
SERVE_ARGS  ?=

.PHONY: setup serve test

setup:
	$(PYTHON) scripts/setup_env.py

# ComfyUI in the foreground on 127.0.0.1, CPU only, newest frontend; Ctrl-C stops it.
serve: setup
	cd $(COMFY) && exec $(abspath $(VPY)) main.py --cpu --listen 127.0.0.1 --port $(PORT) \
		--front-end-root $(FRONTEND) $(SERVE_ARGS)

# Whole suite (must stay < 20 min on 2 cores). Extra pytest args: make test PYTEST_ARGS="-k harness"
test: setup
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests/

# --- demo: headless ComfyUI runs examples/workflows/coat_transfer_api.json on the sample images ------
# Prints the result's path (under artifacts/demo/). DEMO_ARGS="--gpu" or "--random-weights" (see tools/demo.py).
.PHONY: demo
demo: setup
	$(VPY) tools/demo.py $(DEMO_ARGS)

# --- bench: CPU speed benchmark (6-10 min on 2 cores), rewrites the CPU tables of BENCHMARKS.md ----------
# Raw results in artifacts/bench/speed_cpu.json. BENCH_ARGS="--quick" (< 3 min); "--threads 1" on a busy machine.
.PHONY: bench
bench: setup
	$(VPY) -m coat_model.bench speed --device cpu --json artifacts/bench/speed_cpu.json \
		--update-md BENCHMARKS.md $(BENCH_ARGS)
