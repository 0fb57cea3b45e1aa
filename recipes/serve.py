"""Serve every task of a finished run from one base model: vLLM's OpenAI-compatible server, one LoRA module per
task named after the task, and the bare base model as `base`.

    make install-serving                                                      # once: .venv-serving with vLLM
    python recipes/serve.py --config recipes/configs/smollm2_demo.yaml        # the run in its output_dir
    python recipes/serve.py --config ... --adapter DIR --tasks add,upper --port 8001
    make serve                                                                # the demo run

Before starting vLLM it exports each task as a PEFT LoRA adapter (next to the cgc adapter, in `../peft/<task>`;
skipped for exports newer than the adapter) and, for a GGUF or built-in base, writes the base once as a plain
safetensors directory vLLM can read (`<output_dir>/serving/base`, with the run's tokenizer and chat template).
The server gets `--max-lora-rank` = the smallest value vLLM allows >= (S+K)·r, `--max-loras` = tasks + 1, float32
on CPU (the config's dtype on a GPU), and listens on 127.0.0.1 unless `--host` says otherwise. A request names its
task as the model and sends the run's prompt format: the chat template with the run's system prompt (printed with
an example client once the server is ready). Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import torch

import cgc
from cgc.data import DataError, load_examples
from cgc.models.base_model import PACKAGED_GGUF, TINY_MODELS, load_base_model, resolve
from cgc.recipe import ConfigError, error_exit, load_recipe_config
from cgc.serving import (
    BASE_MODEL_NAME,
    base_dir_is_current,
    example_client,
    mark_base_dir,
    port_in_use,
    stale_exports,
    stop_server,
    vllm_lora_rank,
    vllm_server_command,
    wait_until_answering,
)
from cgc.training.run_dir import RunDir, find_run_adapter

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600  # vLLM on 2 CPU cores starts in ~25 s; a first start also compiles kernels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--adapter", help="a cgc adapter dir (default: <output_dir>/adapters/cgc)")
    parser.add_argument("--tasks", help="comma-separated tasks to serve (default: all of the adapter's)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept other machines (no auth!)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--kv-cache-gib", type=float, default=2.0, help="KV cache size on CPU (on a GPU vLLM sizes it itself)"
    )
    parser.add_argument("--vllm-python", default=str(ROOT / ".venv-serving" / "bin" / "python"))
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values)")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe_config(args.config, args.overrides, check_paths=False)  # no data is read here
        adapter, tasks = find_run_adapter(cfg.output_dir, args.adapter, args.tasks)
        if BASE_MODEL_NAME in tasks:
            raise ConfigError(f"a task is named {BASE_MODEL_NAME!r}, the served name of the bare base model")
        if port_in_use(args.host, args.port):
            raise ConfigError(f"port {args.port} on {args.host} is in use: stop what holds it, or pass --port")
        if not Path(args.vllm_python).is_file():
            raise ConfigError(f"no serving environment at {args.vllm_python}: run `make install-serving` first")
    except ValueError as err:  # cgc.CGCError included
        error_exit(str(err))

    peft_dir = adapter.parent / "peft"
    export_tasks(cfg, adapter, peft_dir, stale_exports(adapter, peft_dir, tasks))
    base_dir = servable_base(cfg, RunDir(cfg.output_dir).serving_base)
    adapter_config = cgc.CGCLoraConfig.load(adapter)
    lora_rank = adapter_config.exported_rank  # (S+K)·r: each task's exported LoRA
    on_gpu = torch.cuda.is_available()
    dtype = cfg.model.dtype if on_gpu else "float32"  # vLLM's CPU LoRA path matched PEFT in float32, not bfloat16
    adapters = {t: peft_dir / t for t in tasks}
    kv_cache_gib = None if on_gpu else args.kv_cache_gib
    command = vllm_server_command(
        args.vllm_python, str(base_dir), adapters, lora_rank, dtype, args.host, args.port, kv_cache_gib
    )
    print("starting vLLM:", " ".join(command), flush=True)
    # SIGTERM (kill, a process manager) ends this process through the `finally` below, as Ctrl-C does: without
    # it Python would die at once and leave vLLM running, in the session of its own it gets here.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    server = subprocess.Popen(command, start_new_session=True)  # its own group: Ctrl-C here stops all of it once
    url = f"http://{args.host}:{args.port}"
    try:
        problem = wait_until_answering(server, url, READY_TIMEOUT_S)
        if problem:
            error_exit(f"{problem} (its log is above)", 1)
        print_usage(url, tasks, peft_dir, lora_rank, cfg.data.system_prompt, example_input(cfg, tasks[0]))
        sys.exit(server.wait())
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server)


def export_tasks(cfg, adapter: Path, peft_dir: Path, tasks: list[str]) -> None:
    """Each task in `tasks` as a PEFT LoRA adapter under `peft_dir` (exact: cgc.export_peft_adapter)."""
    if not tasks:
        return
    print(f"exporting {len(tasks)} task(s) to {peft_dir}: {', '.join(tasks)}", flush=True)
    m = cfg.model
    base, _ = load_base_model(m.name_or_path, m.gguf_file, torch.float32, seed=cfg.seed)
    model = cgc.load_adapter(base, adapter)
    for task in tasks:
        cgc.export_peft_adapter(model, task, peft_dir / task)


def servable_base(cfg, base_dir: Path) -> Path | str:
    """A directory vLLM reads: the config's own HF model (dir or hub name), or for a GGUF or built-in base a
    float32 safetensors copy written once to `base_dir` with its tokenizer (chat template included)."""
    m = cfg.model
    path, gguf = resolve(m.name_or_path, m.gguf_file)
    if gguf is None and m.name_or_path not in TINY_MODELS and m.name_or_path not in PACKAGED_GGUF:
        return path
    identity = {"name_or_path": m.name_or_path, "gguf_file": m.gguf_file}
    if m.name_or_path in TINY_MODELS:  # built from the run's seed, as training built it
        identity["seed"] = cfg.seed
    if base_dir_is_current(base_dir, identity):
        return base_dir
    print(f"writing the base model for vLLM (once) to {base_dir}", flush=True)
    model, tokenizer = load_base_model(m.name_or_path, m.gguf_file, torch.float32, seed=cfg.seed)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    mark_base_dir(base_dir, identity)
    return base_dir


def print_usage(url, tasks, peft_dir, lora_rank, system_prompt, text) -> None:
    width = max(len(t) for t in [*tasks, BASE_MODEL_NAME])
    rows = [f"  {t:<{width}}  {peft_dir / t}" for t in tasks]
    print(
        f"\nserving at {url}/v1 (OpenAI-compatible); model name -> adapter (rank {lora_rank}, "
        f"--max-lora-rank {vllm_lora_rank(lora_rank)}):\n"
        f"  {BASE_MODEL_NAME:<{width}}  the base model alone\n" + "\n".join(rows),
        flush=True,
    )
    prompt_format = f"system prompt {system_prompt!r}" if system_prompt else "no system prompt"
    print(f"\nprompt format: the model's chat template, {prompt_format} (as in training). Example client:\n")
    print(example_client(url, tasks[0], system_prompt, text, max_tokens=32), flush=True)


def example_input(cfg, task: str) -> str:
    """An input of `task` from the training data, or a placeholder when the data is not at hand."""
    try:
        rows = load_examples(cfg.data.train_files, cfg.data.format, cfg.data.task_field)
    except (DataError, OSError, ValueError):
        return "..."
    return next((row["input"] for row in rows if row["task"] == task), "...")


if __name__ == "__main__":
    sys.exit(main())
