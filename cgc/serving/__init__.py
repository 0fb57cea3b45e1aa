"""Serving a run's tasks with an existing engine: vLLM's OpenAI-compatible server with one LoRA module per task
(`vllm`: its command line, readiness and stop, the base model written once for it, stale exports)."""

from cgc.serving.vllm import (
    BASE_MARKER,
    BASE_MODEL_NAME,
    VLLM_LORA_RANKS,
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
from cgc.training.run_dir import find_run_adapter as run_adapter  # its name before the package move

__all__ = [
    "BASE_MARKER",
    "BASE_MODEL_NAME",
    "VLLM_LORA_RANKS",
    "base_dir_is_current",
    "example_client",
    "mark_base_dir",
    "port_in_use",
    "run_adapter",
    "stale_exports",
    "stop_server",
    "vllm_lora_rank",
    "vllm_server_command",
    "wait_until_answering",
]
