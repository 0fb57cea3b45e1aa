"""What the benchmark scripts share: interleaved timing, a train step, non-zero adapter weights, machine facts,
and the demo's adapter shape."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

import cgc

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "data" / "demo"
DEMO_CLUSTERS: dict[str, list[str]] = json.loads((DEMO / "clusters.json").read_text())  # 3 clusters x 3 tasks
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def time_alternately(steps: dict, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each step, the steps called in turn (machines are noisy: interleaving puts the
    same noise on every contender, so their ratio is what to compare)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_step(model, params, inputs):
    """forward + backward + AdamW step on `params`."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def randomize(params, seed: int = 1, std: float = 0.02) -> None:
    """Non-zero adapter weights (LoRA B starts at zero, which would make every comparison trivial)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * std)


def machine(device: str) -> dict:
    return {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def demo_cgc(base, ids: torch.Tensor):
    """The demo's CGC-LoRA shape (3 clusters x 3 tasks, S=2, K=1, r=8 on all 7 projections) on `base`, and a batch
    of `ids` that holds one cluster with its three tasks mixed, as the cluster-aware sampler gives it.
    -> (model, trainable params, inputs)"""
    config = cgc.CGCLoraConfig(
        clusters=DEMO_CLUSTERS, r=8, alpha=16, num_shared_experts=2, num_task_experts=1, target_modules=ALL_PROJECTIONS
    )
    model = cgc.attach(base, config).train()
    tasks = DEMO_CLUSTERS["words"]
    inputs = {"input_ids": ids, "labels": ids, "task_ids": [tasks[i % len(tasks)] for i in range(len(ids))]}
    return model, [p for _, p in model.trainable_parameters()], inputs


def peft_lora(base, ids: torch.Tensor, rank: int):
    """PEFT LoRA of `rank` on all 7 projections (alpha/r = 2, as the demo's experts). -> (model, params, inputs)"""
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL_PROJECTIONS)).train()
    return model, [p for p in model.parameters() if p.requires_grad], {"input_ids": ids, "labels": ids}
