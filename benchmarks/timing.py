"""What the benchmark scripts share: interleaved timing, a train step, non-zero adapter weights, machine facts,
and the demo's adapter shape."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

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
