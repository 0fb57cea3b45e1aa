"""How far AdamW moves a parameter that only some steps reach, per gradient and over a run.

    python benchmarks/adam_presence.py                    # present every 1st, 3rd, 9th step; noise 0, 1, 3
    python benchmarks/adam_presence.py --every 1,2,4 --steps 1000

Why it matters here: the cluster-aware sampler trains one cluster per micro-step, so with C clusters drawn
uniformly each cluster's experts and gates get a gradient on ~1/C of the steps (zero on the others). AdamW's second
moment averages those zeros in, so each gradient moves the parameter ~sqrt(C) times as far as an every-step
parameter's at the same lr, and the whole run moves it 1/sqrt(C) as far. The same lr is then another step for
another cluster map: compare.py tunes `cgc_one_cluster` and `cgc_task_clusters` on their own grid
(cgc.adapter.presets.CLUSTER_MAPS; docs/experiments.md, 2026-12-07).

Each case: a 1000-element parameter from zero, torch AdamW (betas 0.9/0.999, no weight decay), a constant gradient
of ones plus `noise` x N(0, 1) on the steps it is present, zero on the others. Prints one JSON line per case: the
mean distance travelled in units of lr, per gradient and in all.
"""

from __future__ import annotations

import argparse
import json

import torch


def travel(every: int, steps: int, noise: float, lr: float = 1e-3, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    param = torch.zeros(1000, requires_grad=True)
    optimizer = torch.optim.AdamW([param], lr=lr, weight_decay=0.0)
    gradients = 0
    for step in range(steps):
        if step % every == 0:
            param.grad = torch.ones(1000) + noise * torch.randn(1000)
            gradients += 1
        else:
            param.grad = torch.zeros(1000)  # what an absent cluster's parameters get (ZeRO's buffer is zeroed)
        optimizer.step()
    total = -param.detach().mean().item() / lr
    return {"every": every, "noise": noise, "gradients": gradients, "travel": round(total, 2),
            "per_gradient": round(total / gradients, 3)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", default="1,3,9", help="a gradient every n-th step (n = the number of clusters)")
    parser.add_argument("--noise", default="0,1,3", help="gradient noise (std) around a constant direction")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    for noise in (float(n) for n in args.noise.split(",")):
        for every in (int(e) for e in args.every.split(",")):
            print(json.dumps(travel(every, args.steps, noise)), flush=True)


if __name__ == "__main__":
    main()
