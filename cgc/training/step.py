"""One optimizer step of the training recipe: its micro-batches (all of one cluster, the same on every rank), the
loss as a mean over the step's target tokens on all ranks, backward and DeepSpeed's step."""

from __future__ import annotations

from cgc.adapter.model import CGCModel
from cgc.training.distributed import all_reduce_sum, clear_zero3_gradient_partitions
from cgc.training.run_log import PhaseTimes, StepStats
from cgc.training.target_loss import forward_on_targets, target_tokens, token_loss


def train_step(engine, micro_batches, sampler, grad_accum: int, logits_to_keep: bool, phases: PhaseTimes, world: int):
    """`grad_accum` micro-batches from the iterator `micro_batches` (whose sampler names each batch's cluster) through
    the DeepSpeed `engine`. -> (this rank's StepStats, the global grad norm or None)"""
    model: CGCModel = engine.module
    stats = StepStats(model.task_map)
    micro_steps = []  # (batch, its cluster): the whole step's data first, to count its target tokens
    for _ in range(grad_accum):
        # the task ids stay on the host: the model routes by them there (a device copy would cost a sync)
        batch = {k: v if k == "task_ids" else v.to(engine.device) for k, v in next(micro_batches).items()}
        micro_steps.append((batch, sampler.batch_cluster))  # the same cluster on every rank
    step_targets = all_reduce_sum([sum(float(target_tokens(b["labels"]).sum()) for b, _ in micro_steps)])[0]
    # DeepSpeed divides each backward by grad_accum and averages gradients over ranks: scaling by
    # world * grad_accum / step_targets makes the step's gradient that of the mean over all its target tokens,
    # whatever the split over ranks and micro-batches (a per-batch mean would weight short targets more).
    scale = world * grad_accum / max(step_targets, 1.0)
    phases.mark("data")
    for batch, cluster in micro_steps:
        logits, labels = forward_on_targets(engine, batch, logits_to_keep)
        loss_sum, per_sample, per_sample_tokens = token_loss(logits, labels)
        phases.mark("forward")
        engine.backward(loss_sum * scale)
        phases.mark("backward")
        engine.step()
        phases.mark("optimizer")
        stats.add(
            cluster=cluster,
            tokens=float(batch["attention_mask"].sum()),
            padded_tokens=float(batch["attention_mask"].numel()),
            task_ids=batch["task_ids"],
            per_sample_loss=per_sample,
            per_sample_tokens=per_sample_tokens,
        )
        phases.mark("stats")
    grad_norm = engine.get_global_grad_norm()
    grad_norm = None if grad_norm is None else float(grad_norm)
    if engine.zero_optimization_stage() == 3:
        clear_zero3_gradient_partitions(engine)
    phases.mark("optimizer")
    return stats, grad_norm
