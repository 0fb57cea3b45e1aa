"""vLLM serves every task of a cgc adapter, and the bare base model, token for token as cgc generates them.

    make test-serving

A SmolLM2-135M cgc adapter with non-zero experts (4 tasks in 2 clusters, the demo's S, K and r) is written as a
finished run's `adapters/cgc`; `recipes/serve.py` exports it and starts vLLM (float32, CPU); concurrent chat
requests that mix every task and the base model must return the tokens of cgc's own greedy decoding of the same
prompt format (the chat template with the run's system prompt). A wrong export scaling, rank or target module,
a wrong prompt format, or a base request given some task's adapter (the `--max-loras` trap) changes tokens.
"""

import json
import random
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import cgc
from cgc.data.tokenization import chat_messages, prompt_token_ids
from cgc.models.base_model import load_base_model
from cgc.recipe.config import load_recipe_config
from cgc.serving import BASE_MODEL_NAME, port_in_use
from cgc.training.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = "recipes/configs/smollm2_demo.yaml"
CLUSTERS = {"words": ["reverse_words", "uppercase"], "numbers": ["add", "maximum"]}
PROMPTS = ["apple river stone", "7 12 3", "green table", "41 + 9", "mountain", "5 - 2 = ?"]
NEW_TOKENS = 12


def build_adapter(out: Path):
    """A cgc adapter with non-zero experts and gates on SmolLM2 -> the float32 cgc model."""
    cfg = load_recipe_config(DEMO, [], check_paths=False)
    base, tokenizer = load_base_model("smollm2-135m-instruct", None, torch.float32)
    config = cgc.CGCLoraConfig(
        clusters=CLUSTERS,
        r=cfg.cgc.r,
        alpha=cfg.cgc.alpha,
        num_shared_experts=cfg.cgc.num_shared_experts,
        num_task_experts=cfg.cgc.num_task_experts,
        target_modules=cfg.cgc.target_modules,
    )
    model = cgc.attach(base, config).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B (zero at init) and the gates random: every expert and the gate mixture matter
        for name, param in model.trainable_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif name.endswith("gate_logits"):
                param.copy_(torch.randn(param.shape, generator=generator))
    model.save_adapter(out / "adapters" / "cgc")
    return model, tokenizer, cfg.data.system_prompt


def greedy_all(model, tokenizer, system_prompt, requests) -> dict:
    """cgc's greedy tokens for every (task, prompt); the base model's (a fresh copy) for `base`."""
    plain, _ = load_base_model("smollm2-135m-instruct", None, torch.float32)
    return {
        (name, text): greedy(plain.eval() if name == BASE_MODEL_NAME else model, tokenizer, text, system_prompt, name)
        for name, text in requests
    }


def greedy(model, tokenizer, text: str, system_prompt: str | None, name: str) -> list[int]:
    """Greedy tokens for one prompt in the run's format: the cgc model for a task, a plain model for `base`."""
    ids = torch.tensor([prompt_token_ids(tokenizer, text, system_prompt=system_prompt)])
    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        if name == BASE_MODEL_NAME:
            out = model.generate(input_ids=ids, **kwargs)
        else:
            out = model.generate(input_ids=ids, task_ids=[name], **kwargs)
    return without_eos(out[0, ids.shape[1] :].tolist(), tokenizer.eos_token_id)


def without_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def ask(url: str, model: str, text: str, system_prompt: str | None) -> list[int]:
    body = {
        "model": model,
        "messages": chat_messages(text, system_prompt),
        "temperature": 0,
        "max_tokens": NEW_TOKENS,
        "return_token_ids": True,
    }
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "run"
    model, tokenizer, system_prompt = build_adapter(out)
    port = free_port()
    log = open(out / "serve.log", "w+")  # noqa: SIM115 (read back below)
    server = subprocess.Popen(
        [sys.executable, "recipes/serve.py", "--config", DEMO, "--port", str(port), f"output_dir={out}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 900
    while "serving at" not in (out / "serve.log").read_text():
        assert server.poll() is None and time.monotonic() < deadline, (out / "serve.log").read_text()[-6000:]
        time.sleep(1)
    yield f"http://127.0.0.1:{port}", model, tokenizer, system_prompt, (out / "serve.log").read_text()
    server.send_signal(signal.SIGTERM)  # as `kill` or a process manager stops it: serve.py stops vLLM with itself
    server.wait(timeout=120)
    log.close()
    assert not port_in_use("127.0.0.1", port)


def test_every_task_and_the_base_model_served_concurrently_match_cgc_token_for_token(served):
    url, model, tokenizer, system_prompt, _ = served
    tasks = [t for ts in CLUSTERS.values() for t in ts]
    requests = [(name, text) for name in [*tasks, BASE_MODEL_NAME] for text in PROMPTS]
    random.Random(0).shuffle(requests)  # every batch the server forms mixes tasks and base requests
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: ask(url, r[0], r[1], system_prompt), requests))
    expected = greedy_all(model, tokenizer, system_prompt, requests)
    # The check can fail: every task's experts change some answer of the base model.
    for task in tasks:
        assert any(expected[task, t] != expected[BASE_MODEL_NAME, t] for t in PROMPTS), task
    mismatches = [
        (name, text, got, expected[name, text])
        for (name, text), got in zip(requests, answers, strict=True)
        if without_eos(got, tokenizer.eos_token_id) != expected[name, text]
    ]
    assert not mismatches, mismatches


def test_serve_prints_the_task_table_and_an_example_client_in_the_run_prompt_format(served):
    url, _, _, system_prompt, log = served
    for task in [t for ts in CLUSTERS.values() for t in ts]:
        assert f"  {task} " in log
    assert f"{url}/v1" in log and "--max-lora-rank 32" in log  # (S+K)·r = 24 -> 32
    assert "--max-loras 5" in log  # 4 tasks + a free slot
    assert json.dumps(system_prompt) in log and "from openai import OpenAI" in log
