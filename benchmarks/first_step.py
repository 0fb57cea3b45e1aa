"""How far one AdamW step moves a layer's output, per method of the comparison and per scaling rule.

    python benchmarks/first_step.py                       # the demo's matched budget (120), a 576x576 layer
    python benchmarks/first_step.py --budget 240 --lr 1e-4 --d-out 1536

For each method (`cgc.presets.matched_budget` on the demo's 3 x 3 clusters) and each rule: one q_proj layer,
a batch of 8 x 16 random inputs of one cluster (as the sampler gives it), one AdamW step on a squared error,
and |h_after - h_before| / |h_before|. Rules: `old` (alpha = 2r per expert, weight alpha/r x gate, the rule
before 0.2), `lora` (one alpha = 16, weight alpha/r x gate) and `rslora` (one alpha = 16, every expert
alpha/sqrt(task rank) at a uniform gate). Prints JSON; `spread` is the largest change over the smallest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

import cgc
from cgc.adapter.presets import matched_budget

CLUSTERS = json.loads((Path(__file__).resolve().parents[1] / "recipes/data/demo/clusters.json").read_text())
RULES = {
    "old": lambda c: dataclasses.replace(c, scaling="lora", alpha=2.0 * c.r),
    "lora": lambda c: dataclasses.replace(c, scaling="lora", alpha=16.0),
    "rslora": lambda c: dataclasses.replace(c, scaling="rslora", alpha=16.0),
}


class OneLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.q_proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.q_proj(x)


def change(config: cgc.CGCLoraConfig, d_in: int, d_out: int, lr: float, seed: int) -> float:
    torch.manual_seed(seed)
    model = cgc.attach(OneLayer(d_in, d_out), config)
    tasks = config.task_map.tasks_of(next(iter(config.clusters)))
    ids = torch.tensor([model.task_id(tasks[i % len(tasks)]) for i in range(8)])
    generator = torch.Generator().manual_seed(seed + 1)
    x, y = torch.randn(8, 16, d_in, generator=generator), torch.randn(8, 16, d_out, generator=generator)
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=lr, weight_decay=0.0)
    with torch.no_grad():
        before = model(x, task_ids=ids)
    ((model(x, task_ids=ids) - y) ** 2).mean().backward()
    optimizer.step()
    with torch.no_grad():
        return float((model(x, task_ids=ids) - before).norm() / before.norm())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-out", type=int, default=576)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    methods = matched_budget(CLUSTERS, args.budget, target_modules=["q_proj"], min_rank=1)
    results = {}
    for rule, apply in RULES.items():
        row = {m: change(apply(c), args.d_in, args.d_out, args.lr, args.seed) for m, c in methods.items()}
        results[rule] = {"change": row, "spread": max(row.values()) / min(row.values())}
    print(json.dumps({"benchmark": "first_step", "settings": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
