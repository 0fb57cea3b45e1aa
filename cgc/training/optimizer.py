"""The recipe's optimizer and learning-rate schedule: experts and gates as parameter groups of their own.

The experts follow train.schedule (warmup, then cosine / linear / constant). The gates keep train.gate_lr from the
first step to the last: their gradient is zero until the experts have moved (cgc.adapter.layer), and a warmup
and decay on top left a 40-step run's logits moving by at most ~0.1 (docs/experiments.md)."""

from __future__ import annotations

import torch

from cgc.adapter.model import CGCModel


def optimizer_and_schedule(model: CGCModel, train, ds_config: dict, clusters: list[str] | None = None):
    """`train`: the recipe's train section (lr, gate_lr, weight_decay, schedule, warmup_steps, max_steps).
    `clusters`: the clusters that have training data; the others' parameters are frozen and left out, since no step
    could move them. -> (optimizer, scheduler, the name of each parameter group in the scheduler's order)."""
    from transformers import get_scheduler

    groups = model.optimizer_groups(train.lr, train.gate_lr, train.weight_decay, clusters)
    if "offload_optimizer" in ds_config["zero_optimization"]:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups)
    else:
        # fused: one pass over each flat ZeRO partition instead of ~10 elementwise ones. ZeRO updates every
        # cluster's experts each step (absent ones by momentum), 3x a plain LoRA's parameters in the demo:
        # the default kernel took a quarter of a CPU step (benchmarks/recipe_speed.py phase_seconds).
        optimizer = torch.optim.AdamW(groups, fused=True)
    schedule = "constant_with_warmup" if train.schedule == "constant" else train.schedule
    # transformers' schedule gives the experts' factor per step; the gates' is 1 (a LambdaLR of one factor each)
    experts = get_scheduler(
        schedule, optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps
    )
    names = [g["name"] for g in groups]
    factors = [constant if name == "gates" else experts.lr_lambdas[0] for name in names]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors), names


def constant(step: int) -> float:
    """The gates' factor on train.gate_lr at every step."""
    return 1.0
