# fasttx developer commands. `make demo` and `make test` each set up what they need.
PYTHON ?= python3
# Installed only when torch is missing (the CPU wheel on a CPU-only machine).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup setup-demo demo test test-transformers-4.5x check-cuda gpu-run bench report static lint clean

# --no-build-isolation lets setup.py see the installed torch: it builds fasttx._C where
# torch is a CUDA build and nvcc exists, and skips it (with a message) everywhere else.
# Without build isolation the build backend must already be there: setuptools >= 77
# (the PEP 639 license fields; it builds wheels itself, no separate `wheel` package).
# `make setup` installs the test extras, `make setup-demo` only what the demo needs.
define install_fasttx
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH_SPEC)"
	$(PYTHON) -m pip install "setuptools>=77"
	$(PYTHON) -m pip install --no-build-isolation -e ".[$(1)]"
endef

setup:
	$(call install_fasttx,test)

setup-demo:
	$(call install_fasttx,train)

# Train the tiny model on the built-in copy task (fused kernels on a GPU) and print the result.
demo: setup-demo
	$(PYTHON) -m fasttx

# The whole test suite; GPU-only tests skip themselves on CPU. pytest's exit code 5
# ("no tests collected") is reported as a failure: an empty run proves nothing. Then the
# Hugging Face integration's tests once more on the transformers 4.5x line.
test: setup
	@status=0; $(PYTHON) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing the run" >&2; fi; \
	exit $$status
	$(MAKE) --no-print-directory test-transformers-4.5x

# tests/integrations against transformers 4.57 (the suite above has the newest release):
# it, the hub client and tokenizers it accepts, and that hub client's HTTP stack (requests;
# the newer one uses httpx) go to a side folder, first on PYTHONPATH.
HF_4_5X = "transformers==4.57.6" "huggingface_hub>=0.34,<1.0" "tokenizers>=0.22,<=0.23.0" \
	"requests>=2.32" "urllib3>=2" "charset_normalizer>=3" certifi
HF_4_5X_DIR = build/transformers-4.5x
test-transformers-4.5x:
	$(PYTHON) -m pip install --quiet --no-deps --upgrade --target $(HF_4_5X_DIR) $(HF_4_5X)
	PYTHONPATH=$(HF_4_5X_DIR) $(PYTHON) -c "import transformers as t; assert t.__version__.startswith('4.5'), t.__version__"
	PYTHONPATH=$(HF_4_5X_DIR) $(PYTHON) -m pytest $(PYTEST_ARGS) -p no:cacheprovider \
		tests/integrations -k "not triton"  # the kernels' cases ran above; the version is the point

# Compile every csrc/ source for sm_80 and sm_90a with nvcc (no GPU needed), so a kernel
# that does not compile fails CI on a CPU machine. Fetches the CUDA library headers a CPU
# torch lacks (cuBLAS, cuSPARSE, cuSOLVER) from PyPI once, into build/cuda-headers.
check-cuda: setup
	$(PYTHON) tools/check_cuda.py

# The one-call GPU run (tools/gpu_run.py; README "Checking a GPU in one call"): builds
# fasttx._C for sm_90a and runs env, build, smoke, sanitizer, tests and bench on this
# machine's GPU within GPU_BUDGET seconds; summary, logs and results go to GPU_OUT.
# GPU_ARGS="--rehearse" runs the same phases on CPU, "--plan" prints the schedule.
GPU_BUDGET ?= 540
GPU_OUT ?= build/gpu-run
GPU_ARGS ?=
gpu-run:
	$(PYTHON) tools/gpu_run.py --budget $(GPU_BUDGET) --out $(GPU_OUT) $(GPU_ARGS)

# The benchmark suite on this machine's GPU (the full profile; `make bench BENCH_ARGS=--quick`).
# `make report` renders every results folder (tables, plots) and the README's performance section.
BENCH_ARGS ?=
bench: setup
	$(PYTHON) -m benchmarks $(BENCH_ARGS)

report:
	$(PYTHON) -m benchmarks report --readme README.md

# The static cost report: every kernel compiled for sm_90 and counted (no GPU needed;
# benchmarks/README.md, "Static cost report"). STATIC_ARGS="--python /tmp/triton36/bin/python"
# compiles under another Triton.
static:
	$(PYTHON) -m benchmarks static $(STATIC_ARGS)

lint:
	$(PYTHON) -m ruff check fasttx tests benchmarks tools

clean:
	rm -rf build dist *.egg-info fasttx/_C*.so .pytest_cache
