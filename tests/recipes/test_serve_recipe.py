"""recipes/serve.py without vLLM: the server arguments it derives from a run, export freshness, and bad input
(each one clear message, exit 2). vLLM itself is exercised by tests/serving (make test-serving)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cgc
from cgc.serving import example_client, stale_exports, vllm_lora_rank, vllm_server_command
from tests.conftest import ROOT, make_config, tiny_llama


@pytest.mark.parametrize("rank, allowed", [(1, 1), (2, 8), (8, 8), (12, 16), (24, 32), (40, 64), (320, 320)])
def test_max_lora_rank_is_the_smallest_value_vllm_allows_that_holds_the_rank(rank, allowed):
    assert vllm_lora_rank(rank) == allowed


def test_a_rank_beyond_vllm_is_refused():
    with pytest.raises(ValueError, match="up to 512"):
        vllm_lora_rank(513)


def test_the_server_gets_one_lora_module_per_task_and_a_free_slot_for_base_requests():
    adapters = {"add": Path("/x/peft/add"), "upper": Path("/x/peft/upper"), "len": Path("/x/peft/len")}
    command = vllm_server_command("py", "/x/base", adapters, 24, "float32", "127.0.0.1", 8123, kv_cache_gib=2)
    value = {flag: command[command.index(flag) + 1] for flag in ("--max-lora-rank", "--max-loras", "--host")}
    assert value == {"--max-lora-rank": "32", "--max-loras": "4", "--host": "127.0.0.1"}
    modules = command[command.index("--lora-modules") + 1 : command.index("--max-lora-rank")]
    assert modules == ["add=/x/peft/add", "upper=/x/peft/upper", "len=/x/peft/len"]
    assert command[command.index("--kv-cache-memory-bytes") + 1] == str(2 * 2**30)
    gpu = vllm_server_command("py", "/x/base", adapters, 24, "bfloat16", "127.0.0.1", 8123)
    assert "--kv-cache-memory-bytes" not in gpu and gpu[gpu.index("--dtype") + 1] == "bfloat16"


def test_the_example_client_sends_the_run_system_prompt_and_names_the_task():
    code = example_client("http://127.0.0.1:8000", "add", "Answer with the result only.", "3 4", max_tokens=8)
    assert 'model="add"' in code and '"content": "Answer with the result only."' in code
    compile(code, "example", "exec")  # valid Python a user can paste
    assert '"role": "system"' not in example_client("http://h:1", "add", None, "3 4", max_tokens=8)


def test_exports_missing_or_older_than_the_adapter_are_stale(tmp_path):
    adapter, peft = tmp_path / "cgc", tmp_path / "peft"
    model = cgc.attach(tiny_llama(), make_config())
    model.save_adapter(adapter)
    cgc.export_peft_adapter(model, "add", peft / "add")
    cgc.export_peft_adapter(model, "mul", peft / "mul")
    old = time.time() - 3600
    os.utime(peft / "mul" / "adapter_model.safetensors", (old, old))  # exported before the adapter was trained
    assert stale_exports(adapter, peft, ["add", "mul", "sub"]) == ["mul", "sub"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    cgc.attach(tiny_llama(), make_config()).save_adapter(out / "adapters" / "cgc")
    return out


def serve(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "recipes/serve.py", "--config", "recipes/configs/tiny_cpu.yaml", *args]
    return subprocess.run([*command, f"output_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_run_without_adapters_is_refused(tmp_path):
    result = serve(tmp_path / "unfinished")
    assert result.returncode == 2 and "no cgc adapter at" in result.stderr and "train first" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_task_the_adapter_does_not_have_is_refused(run_dir):
    result = serve(run_dir, "--tasks", "add,nope")
    assert result.returncode == 2 and "no task ['nope']" in result.stderr and "add" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_is_refused(run_dir):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        result = serve(run_dir, "--port", str(held.getsockname()[1]))
    assert result.returncode == 2 and "is in use" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_serving_environment_names_the_make_target(run_dir, tmp_path):
    result = serve(run_dir, "--vllm-python", str(tmp_path / "no" / "python"))
    assert result.returncode == 2 and "make install-serving" in result.stderr


def test_the_base_written_for_vllm_is_the_runs_own_base(tmp_path, monkeypatch):
    """A built-in tiny base is rebuilt from the run's seed (it was once always built from seed 0: vLLM would have
    served another base than the one the adapters were trained on), and a base of another seed is rewritten."""
    from safetensors.torch import load_file

    from cgc.models import tiny_model
    from cgc.recipe import load_recipe_config

    monkeypatch.syspath_prepend(str(ROOT / "recipes"))
    import serve

    for seed in (3, 4):
        cfg = load_recipe_config(ROOT / "recipes/configs/tiny_cpu.yaml", [f"seed={seed}"], root=ROOT)
        written = serve.servable_base(cfg, tmp_path / "base")
        weights = load_file(written / "model.safetensors")
        expected = tiny_model("tiny-llama", seed=seed).state_dict()
        assert all(torch.equal(weights[k], expected[k]) for k in weights), seed
