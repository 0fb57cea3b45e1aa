"""The cheap test bench of the method: methods and gate settings trained on a tiny random Llama, in seconds.

    python benchmarks/toy_methods.py --variants cgc_lora,moelora --steps 300 --seeds 0,1,2
    python benchmarks/toy_methods.py --variants cgc_lora --gate-lr 0.003,0.03,0.3 --gate-init uniform,own

One process, no DeepSpeed: the demo data (recipes/data/demo, task-hidden or --instruct), the character tokenizer,
`cgc.models.tiny_model` (hidden --hidden, --layers layers), experts on every projection, the cluster-aware sampler
(uniform mixing), AdamW with the experts at --lr (warmup then cosine) and the gates at their own --gate-lr
(constant, no warmup). Every method at the matched budget of the demo's CGC shape (cgc.presets.matched_budget).
Scored by the held-out target loss per task (teacher-forced cross-entropy on the eval file: continuous, so small
differences show with few seeds) and, for gated methods, the gate's share on each task's own experts.
Prints JSON: per variant and seed, the mean and per-task held-out loss and the own-expert share.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import cgc
from cgc.adapter.presets import matched_budget
from cgc.analysis.gate_report import own_share
from cgc.data import ClusterAwareBatchSampler, MultiTaskCollator, load_examples, tokenize_dataset
from cgc.models import char_tokenizer, tiny_model
from cgc.training.target_loss import token_loss

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "data" / "demo"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def method_configs(clusters: dict, budget: int, alpha: float, scaling: str) -> dict[str, cgc.CGCLoraConfig]:
    presets = matched_budget(clusters, budget, min_rank=2, target_modules=PROJECTIONS, alpha=alpha, scaling=scaling)
    return dict(presets)


def batches_of(dataset, collate, size: int):
    for start in range(0, len(dataset), size):
        yield collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])


def held_out_loss(model: cgc.CGCModel, dataset, collate) -> dict[str, float]:
    """Mean target-token loss per task on `dataset` (teacher forced)."""
    sums, counts = np.zeros(len(model.tasks)), np.zeros(len(model.tasks))
    model.eval()
    with torch.no_grad():
        for batch in batches_of(dataset, collate, 64):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], task_ids=batch["task_ids"]
            ).logits
            _, per_sample, tokens = token_loss(logits, batch["labels"])
            np.add.at(sums, batch["task_ids"].numpy(), per_sample.numpy())
            np.add.at(counts, batch["task_ids"].numpy(), tokens.numpy())
    model.train()
    return {t: float(s / n) for t, s, n in zip(model.tasks, sums, counts, strict=True) if n}


def run(config: cgc.CGCLoraConfig, data, args, lr: float, gate_lr: float, seed: int) -> dict:
    train, evaluation, collate = data
    torch.manual_seed(seed)
    model = cgc.attach(tiny_model("tiny-llama", seed=0, hidden_size=args.hidden, num_layers=args.layers), config)
    model.train()
    sampler = ClusterAwareBatchSampler(train["task_id"], model.task_map, args.batch, seed=seed, mixing="uniform")
    loader = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate)
    groups = model.optimizer_groups(lr, gate_lr)
    optimizer = torch.optim.AdamW(groups)
    warmup = max(1, args.steps // 10)

    def experts_schedule(step):  # warmup then cosine, as the recipe's default
        return (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (args.steps - warmup)))
        )

    lambdas = [experts_schedule] + [lambda step: 1.0] * (len(groups) - 1)  # gates: constant, no warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    started, step = time.time(), 0
    for batch in itertools.chain.from_iterable(itertools.repeat(loader)):
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], task_ids=batch["task_ids"]
        ).logits
        loss_sum, _, tokens = token_loss(logits, batch["labels"])
        (loss_sum / tokens.sum().clamp_min(1)).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step == args.steps:
            break
    losses = held_out_loss(model, evaluation, collate)
    gates = {"num_shared_experts": config.num_shared_experts, "tasks": {}}
    gates["tasks"] = {t: {n: g.tolist() for n, g in model.gate(t).items()} for t in model.tasks}
    shares, uniform, _ = own_share([gates])
    return {
        "seed": seed,
        "mean_loss": float(np.mean(list(losses.values()))),
        "task_loss": losses,
        "own_share": {t: float(np.mean(s)) for t, s in shares.items()},
        "uniform_share": uniform,
        "seconds": time.time() - started,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="shared_lora,per_task_lora,moelora,cgc_lora")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", default="3e-3", help="comma-separated: every value is run")
    parser.add_argument("--gate-lr", default="3e-2", help="comma-separated: every value is run (gated methods)")
    parser.add_argument("--gate-init", default="uniform", help="comma-separated: uniform, own, random")
    parser.add_argument("--scaling", default="rslora")
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--budget", type=int, default=60, help="total expert rank per layer (matched budget)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--instruct", action="store_true", help="the instruction variant of the demo data")
    args = parser.parse_args()
    torch.set_num_threads(2)
    clusters = json.loads((DEMO / "clusters.json").read_text())
    prefix = "instruct_" if args.instruct else ""
    tokenizer = char_tokenizer()
    task_map = cgc.CGCLoraConfig(clusters=clusters).task_map
    train, _ = tokenize_dataset(load_examples(DEMO / f"{prefix}train.jsonl"), tokenizer, task_map, max_length=64)
    evaluation, _ = tokenize_dataset(load_examples(DEMO / f"{prefix}eval.jsonl"), tokenizer, task_map, max_length=64)
    data = (train, evaluation, MultiTaskCollator(tokenizer.pad_token_id))
    configs = method_configs(clusters, args.budget, args.alpha, args.scaling)
    results = []
    for variant in args.variants.split(","):
        base = configs[variant]
        gated = base.experts_per_task > 1
        for lr, gate_lr, init in itertools.product(
            map(float, args.lr.split(",")),
            map(float, args.gate_lr.split(",")) if gated else [0.0],
            args.gate_init.split(",") if gated else ["uniform"],
        ):
            config = dataclasses.replace(base, gate_init=init)
            runs = [run(config, data, args, lr, gate_lr, int(s)) for s in args.seeds.split(",")]
            means = [r["mean_loss"] for r in runs]
            results.append({
                "variant": variant, "lr": lr, "gate_lr": gate_lr, "gate_init": init,
                "mean_loss": float(np.mean(means)), "std_loss": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
                "own_share": float(np.mean([np.mean(list(r["own_share"].values())) for r in runs if r["own_share"]]))
                if gated and runs[0]["own_share"] else None,
                "runs": runs,
            })  # fmt: skip
            print(json.dumps({k: v for k, v in results[-1].items() if k != "runs"}), flush=True)
    print(json.dumps({"benchmark": "toy_methods", "settings": vars(args), "results": results}))


if __name__ == "__main__":
    main()
