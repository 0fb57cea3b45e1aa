"""The recipe's optimizer and learning-rate schedule: experts and gates as parameter groups of their own."""

from __future__ import annotations

import torch

from cgc.adapter.model import CGCModel


def optimizer_and_schedule(model: CGCModel, train, ds_config: dict):
    """`train`: the recipe's train section (lr, gate_lr, weight_decay, schedule, warmup_steps, max_steps).
    -> (optimizer, scheduler, the name of each parameter group in the scheduler's order)."""
    from transformers import get_scheduler

    groups = model.optimizer_groups(train.lr, train.gate_lr, train.weight_decay)
    if "offload_optimizer" in ds_config["zero_optimization"]:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups)
    else:
        # fused: one pass over each flat ZeRO partition instead of ~10 elementwise ones. ZeRO updates every
        # cluster's experts each step (absent ones by momentum), 3x a plain LoRA's parameters in the demo:
        # the default kernel took a quarter of a CPU step (benchmarks/recipe_speed.py phase_seconds).
        optimizer = torch.optim.AdamW(groups, fused=True)
    schedule = "constant_with_warmup" if train.schedule == "constant" else train.schedule
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps
    )
    return optimizer, scheduler, [g["name"] for g in groups]
