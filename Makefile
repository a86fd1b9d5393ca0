# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: demo test test-all bench lint browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned to the CPU build this machine's pip finds locally; asked for bare,
	# or by a dependency first, pip would fetch a multi-GB CUDA build from PyPI.
	$(BIN)/pip install -q $(TORCH)
	# llama-cpp-python (the llama.cpp engine, autarky's default on a CPU) has no Linux wheel on PyPI: pip builds
	# it once from source and reuses the wheel from its cache after. Portable (AVX2, not -march=native) so the
	# cached wheel runs on any x86-64-v3 machine; without the multimodal library nothing here uses.
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian's Chromium for the web-chat test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the web-chat test will be skipped"

demo: $(STAMP)
	$(BIN)/autarky demo

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -rs

test-all: $(STAMP) browser
	$(BIN)/python -m pytest -q -m ''

# Benchmarks print figures and ratios and write bench/results/*.json; run them on a quiet machine.
bench: $(STAMP)
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/shakespeare.py ../shared/corpora/tinyshakespeare/input.txt
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/curate.py ../shared/corpora/ruslit
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/gguf_decode.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/import_memory.py
	$(BIN)/python bench/sft.py
	$(BIN)/python bench/eval.py

lint: $(STAMP)
	$(BIN)/ruff check autarky tests bench
	$(BIN)/ruff format --check autarky tests bench

clean:
	rm -rf $(VENV) work
