"""Serving throughput under a mixed-task load, printed as JSON: vLLM serving every task of a run (one LoRA
module per task, `recipes/serve.py`), vLLM serving the base model alone, and cgc's own `generate` on batches
that mix tasks (one process, no server).

    make install-serving
    python benchmarks/serving_speed.py                          # the demo run (make demo), else a random adapter
    python benchmarks/serving_speed.py --requests 72 --concurrency 16 --new-tokens 24

Each request is one chat prompt of the demo's eval data in the run's prompt format, asking for exactly
`--new-tokens` tokens (vLLM `ignore_eos`, transformers `min_new_tokens`), so every variant generates the same
number of tokens. The load sends `--requests` requests, `--concurrency` at a time, tasks in a shuffled mix (the
base-alone server gets the same prompts under the model name `base`). cgc's `generate` runs the same prompts in
batches of `--concurrency`, each batch mixing tasks. Without a finished demo run the adapter is random
(non-zero experts of the demo's shape): throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

import cgc
from cgc.adapter.config import CONFIG_NAME
from cgc.data import load_examples
from cgc.data.tokenization import MultiTaskCollator, chat_messages, prompt_token_ids
from cgc.models.base_model import load_base_model
from cgc.recipe.config import load_recipe_config
from cgc.serving import BASE_MODEL_NAME, stop_server, wait_until_answering
from cgc.training.distributed import free_port
from cgc.training.run_dir import RunDir

from timing import machine

ROOT = Path(__file__).resolve().parents[1]
SERVING_PYTHON = ROOT / ".venv-serving" / "bin" / "python"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/smollm2_demo.yaml")
    parser.add_argument("--requests", type=int, default=72)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    cfg = load_recipe_config(args.config, [], check_paths=False)
    rows = load_examples(cfg.data.eval_files, cfg.data.format, cfg.data.task_field)
    rng = random.Random(0)
    requests = [rows[rng.randrange(len(rows))] for _ in range(args.requests)]  # tasks in a shuffled mix
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(cfg.output_dir)
        trained = (RunDir(run_dir).cgc_adapter / CONFIG_NAME).is_file()
        if not trained:
            run_dir = Path(scratch) / "run"
            random_adapter(cfg, RunDir(run_dir).cgc_adapter)
        results = {
            "vllm_all_tasks": load_test(serve_run(args.config, run_dir), requests, cfg, args, by_task=True),
            "vllm_base_alone": load_test(serve_base(run_dir), requests, cfg, args, by_task=False),
            "cgc_generate_mixed": cgc_generate(cfg, RunDir(run_dir).cgc_adapter, requests, args),
        }
    report = {
        "benchmark": "serving_speed",
        **machine("cpu" if not torch.cuda.is_available() else "cuda"),
        "adapter": "the demo run's" if trained else "random, the demo's shape",
        "requests": len(requests),
        "concurrency": args.concurrency,
        "new_tokens": args.new_tokens,
        "results": results,
        "all_tasks_over_base_alone": results["vllm_all_tasks"]["tokens_per_s"]
        / results["vllm_base_alone"]["tokens_per_s"],
        "vllm_all_tasks_over_cgc_generate": results["vllm_all_tasks"]["tokens_per_s"]
        / results["cgc_generate_mixed"]["tokens_per_s"],
    }
    print(json.dumps(report, indent=2))


def random_adapter(cfg, out: Path) -> None:
    base, _ = load_base_model(cfg.model.name_or_path, cfg.model.gguf_file, torch.float32, seed=cfg.seed)
    model = cgc.attach(base, cfg.cgc)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.trainable_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_adapter(out)


class Server:
    """A server process (its own process group) and its URL; stopped with SIGTERM to the group."""

    def __init__(self, command: list[str], port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 900) -> None:
        problem = wait_until_answering(self.process, self.url, timeout)
        if problem:
            self.stop()
            sys.exit(f"{problem}:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        stop_server(self.process, grace_s=60)  # serve.py itself gives vLLM 30 s


def serve_run(config: str, run_dir: Path) -> Server:
    port = free_port()
    command = [sys.executable, "recipes/serve.py", "--config", config, "--port", str(port), f"output_dir={run_dir}"]
    return Server(command, port, run_dir / "serve_all_tasks.log")


def serve_base(run_dir: Path) -> Server:
    """The same base directory recipes/serve.py wrote, without LoRA."""
    port = free_port()
    base = RunDir(run_dir).serving_base
    command = [str(SERVING_PYTHON), "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", str(base)]
    command += ["--served-model-name", BASE_MODEL_NAME, "--dtype", "float32", "--host", "127.0.0.1"]
    command += ["--kv-cache-memory-bytes", str(2 * 2**30)]  # as recipes/serve.py on CPU
    return Server([*command, "--port", str(port)], port, run_dir / "serve_base.log")


def load_test(server: Server, requests, cfg, args, by_task: bool) -> dict:
    server.wait_ready()

    def ask(row) -> int:
        body = {
            "model": row["task"] if by_task else BASE_MODEL_NAME,
            "messages": chat_messages(row["input"], cfg.data.system_prompt),
            "temperature": 0,
            "max_tokens": args.new_tokens,
            "ignore_eos": True,
        }
        request = urllib.request.Request(
            f"{server.url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=600) as reply:
            return json.loads(reply.read())["usage"]["completion_tokens"]

    try:
        ask(requests[0])  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            tokens = sum(pool.map(ask, requests))
        seconds = time.perf_counter() - start
    finally:
        server.stop()
    return {"seconds": seconds, "requests_per_s": len(requests) / seconds, "tokens_per_s": tokens / seconds}


def cgc_generate(cfg, adapter: Path, requests, args) -> dict:
    base, tokenizer = load_base_model(cfg.model.name_or_path, cfg.model.gguf_file, torch.float32, seed=cfg.seed)
    model = cgc.load_adapter(base, adapter).eval()
    collate = MultiTaskCollator(tokenizer.pad_token_id, padding_side="left")
    batches = [requests[i : i + args.concurrency] for i in range(0, len(requests), args.concurrency)]

    def run(batch):
        features = [
            {
                "input_ids": prompt_token_ids(tokenizer, row["input"], system_prompt=cfg.data.system_prompt),
                "task_id": model.task_id(row["task"]),
            }
            for row in batch
        ]
        inputs = collate(features)
        with torch.no_grad():
            out = model.generate(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                task_ids=inputs["task_ids"],
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return (out.shape[1] - inputs["input_ids"].shape[1]) * len(batch)

    run(batches[0][:2])  # warm-up
    start = time.perf_counter()
    tokens = sum(run(b) for b in batches)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "requests_per_s": len(requests) / seconds, "tokens_per_s": tokens / seconds}


if __name__ == "__main__":
    main()
