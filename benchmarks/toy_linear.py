"""The method's mechanisms on a problem whose answer is known: multi-task linear regression through one CGC layer.

    python benchmarks/toy_linear.py                                   # every method, 3 seeds
    python benchmarks/toy_linear.py --variants cgc_lora --gate-lr 0.003,0.03,0.3 --gate-init uniform,own,random

A frozen W0 (d x d) and 9 tasks in 3 clusters of 3. Task t of cluster c wants y = (W0 + D_t) x + noise with
D_t = C_c + P_t: C_c a rank-`--shared-rank` change common to the cluster, P_t a rank-`--task-rank` change of its
own; in each cluster one task (the "odd" one) gets -C_c instead of C_c, so sharing the cluster's experts hurts it
unless its gate turns them down. --examples per task, x ~ N(0, I). Every method at the matched budget of the CGC
shape (cgc.presets.matched_budget), AdamW with the experts at --lr (warmup then cosine) and the gates at their own
--gate-lr (constant), batches of one cluster (the sampler's law: uniform over clusters and tasks). Scored by the
held-out error |Δ_pred - D_t|_F / |D_t|_F per task (the learnt delta against the truth, exact, no sampling noise),
and the gate's share on the own experts, for the odd tasks and the others. Prints JSON lines, then a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math

import numpy as np
import torch
from torch import nn

import cgc
from cgc.adapter.presets import matched_budget

CLUSTERS = {f"c{c}": [f"c{c}t{t}" for t in range(3)] for c in range(3)}
ODD = {tasks[-1] for tasks in CLUSTERS.values()}  # the task of each cluster whose shared change is reversed


class OneLayer(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.q_proj = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        self.q_proj.weight.data.copy_(weight)

    def forward(self, x):
        return self.q_proj(x)


def problem(args, seed: int) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)
    d = args.d

    def low_rank(r, scale):
        return (torch.randn(d, r, generator=g) @ torch.randn(r, d, generator=g)) * scale / math.sqrt(d * r)

    w0 = torch.randn(d, d, generator=g) / math.sqrt(d)
    deltas = {}
    for tasks in CLUSTERS.values():
        common = low_rank(args.shared_rank, args.shared_scale)
        for task in tasks:
            sign = -1.0 if task in ODD else 1.0
            deltas[task] = sign * common + low_rank(args.task_rank, args.task_scale)
    data = {}
    for task, delta in deltas.items():
        x = torch.randn(args.examples, d, generator=g)
        y = x @ (w0 + delta).T + args.noise * torch.randn(args.examples, d, generator=g)
        data[task] = (x, y)
    return {"w0": w0, "deltas": deltas, "data": data}


def train(config: cgc.CGCLoraConfig, truth: dict, args, lr: float, gate_lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = cgc.attach(OneLayer(truth["w0"]), config)
    groups = model.optimizer_groups(lr, gate_lr)
    optimizer = torch.optim.AdamW(groups)
    warmup = max(1, args.steps // 10)

    def experts_schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [experts_schedule] + [lambda s: 1.0] * (len(groups) - 1))
    rng = np.random.default_rng(seed)
    clusters = list(CLUSTERS)
    for _ in range(args.steps):
        tasks = CLUSTERS[clusters[rng.integers(len(clusters))]]  # one cluster per step, as the sampler does
        picks = rng.integers(len(tasks), size=args.batch)
        rows = [rng.integers(args.examples) for _ in picks]
        x = torch.stack([truth["data"][tasks[p]][0][i] for p, i in zip(picks, rows, strict=True)])[:, None, :]
        y = torch.stack([truth["data"][tasks[p]][1][i] for p, i in zip(picks, rows, strict=True)])[:, None, :]
        ids = torch.tensor([model.task_id(tasks[p]) for p in picks])
        ((model(x, task_ids=ids) - y) ** 2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    layer = next(iter(model.adapted_layers().values()))
    errors, own = {}, {}
    with torch.no_grad():
        for task, delta in truth["deltas"].items():
            place = model.task_map.place(task)
            learnt = layer.delta_weight(place.cluster, place.local_index, model.task_scales(task)[layer.layer_index])
            errors[task] = float((learnt - delta).norm() / delta.norm())
            g = model.gate(task)["q_proj"]
            if config.num_shared_experts and config.num_task_experts:
                own[task] = float(g[config.num_shared_experts :].sum())
    return {"error": errors, "own_share": own}


def shares(runs: list[dict], keep) -> float | None:
    """The mean own-expert share over the runs of the tasks `keep` selects (None for a method without a gate)."""
    values = [v for r in runs for t, v in r["own_share"].items() if keep(t)]
    return float(np.mean(values)) if values else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="shared_lora,per_task_lora,moelora,cgc_lora")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", default="1e-2", help="comma-separated: every value is run")
    parser.add_argument("--gate-lr", default="3e-2", help="comma-separated: every value is run (gated methods)")
    parser.add_argument("--gate-init", default="uniform", help="comma-separated: uniform, own, random")
    parser.add_argument("--scaling", default="rslora")
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--budget", type=int, default=60, help="total expert rank (matched budget)")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--shared-rank", type=int, default=4)
    parser.add_argument("--task-rank", type=int, default=2)
    parser.add_argument("--shared-scale", type=float, default=1.0)
    parser.add_argument("--task-scale", type=float, default=0.5)
    parser.add_argument("--examples", type=int, default=64, help="training examples per task")
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    common = {"target_modules": ["q_proj"], "alpha": args.alpha, "scaling": args.scaling}
    configs = matched_budget(CLUSTERS, args.budget, min_rank=2, **common)
    summary = []
    for variant in args.variants.split(","):
        base = configs[variant]
        gated = base.experts_per_task > 1
        grid = itertools.product(
            map(float, args.lr.split(",")),
            map(float, args.gate_lr.split(",")) if gated else [0.0],
            args.gate_init.split(",") if gated else ["uniform"],
        )
        for lr, gate_lr, init in grid:
            config = dataclasses.replace(base, gate_init=init)
            runs = [train(config, problem(args, int(s)), args, lr, gate_lr, int(s)) for s in args.seeds.split(",")]
            odd = [np.mean([r["error"][t] for t in ODD]) for r in runs]
            rest = [np.mean([e for t, e in r["error"].items() if t not in ODD]) for r in runs]
            row = {
                "variant": variant, "lr": lr, "gate_lr": gate_lr, "gate_init": init,
                "error": float(np.mean([np.mean(list(r["error"].values())) for r in runs])),
                "error_odd": float(np.mean(odd)), "error_rest": float(np.mean(rest)),
                "own_share_odd": shares(runs, lambda t: t in ODD),
                "own_share_rest": shares(runs, lambda t: t not in ODD),
            }  # fmt: skip
            summary.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"benchmark": "toy_linear", "settings": vars(args), "results": summary}))


if __name__ == "__main__":
    main()
