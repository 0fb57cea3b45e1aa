"""What one invocation of the training recipe did (`TrainResult`) and run_summary.json, the run's figures."""

from __future__ import annotations

import resource
from dataclasses import dataclass

from cgc.adapter.model import CGCModel
from cgc.data.sampler import LAW as SAMPLER_LAW
from cgc.training.distributed import max_over_ranks
from cgc.training.run_log import PhaseTimes, padding_fraction


@dataclass
class TrainResult:
    step: int  # optimizer steps done, resumed ones included
    finished: bool  # max_steps reached (not stopped by a signal or stop_after)
    final_loss: float
    tokens: float  # real tokens of this invocation's steps, over all ranks
    padded_tokens: float  # every position the model ran on in those steps, padding included
    phases: PhaseTimes  # this rank's seconds per phase of the training steps (no load, eval)


def run_summary(
    model: CGCModel,
    result: TrainResult,
    world: int,
    zero_stage: int,
    quantization: str,
    eval_status: str,
    examples_per_task: dict[str, int],
) -> dict:
    """run_summary.json's content (a collective: every rank calls it; rank 0 writes it). `examples_per_task`: the
    training examples of each task the run's steps drew (ClusterAwareBatchSampler.examples_per_task)."""
    base_bytes_total, base_bytes_rank = base_param_bytes(model)
    return {
        "world_size": world,
        "zero_stage": zero_stage,
        "quantization": quantization,
        "steps": result.step,
        "finished": result.finished,
        "eval": eval_status,  # done, interrupted (by a signal; resume=latest redoes it) or not run
        "final_loss": result.final_loss,
        "trainable_params": model.num_trainable_parameters(),
        # clusters without training data are frozen and left out of the optimizer (CGCModel.optimizer_groups)
        "optimized_params": sum(
            getattr(p, "ds_numel", p.numel()) for _, p in model.trainable_parameters() if p.requires_grad
        ),
        "frozen_clusters": frozen_clusters(model),
        "base_param_bytes_total": base_bytes_total,
        "base_param_bytes_per_rank": max_over_ranks(base_bytes_rank),
        "peak_rss_mb": max_over_ranks(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tokens_per_s": result.tokens / max(result.phases.training_seconds(), 1e-9),  # steps only: no load, saves, eval
        "padding_fraction": padding_fraction(result.tokens, result.padded_tokens),
        "phase_seconds": result.phases.seconds,  # rank 0's; a step's collectives are inside backward/optimizer
        "examples_per_task": examples_per_task,  # examples drawn, repeats of an upsampled task included
        "sampler_law": SAMPLER_LAW,  # which sampler drew them (compare.py never mixes runs of two)
        "compiled_graphs": compiled_graphs(model),  # train.compile: the graphs torch.compile made (null: eager)
    }


def compiled_graphs(model: CGCModel) -> int | None:
    """The graphs torch.compile made in this process (rank 0's): one per routing and shape it recompiled for."""
    if not model.is_compiled:
        return None
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def frozen_clusters(model: CGCModel) -> list[str]:
    """The clusters none of whose parameters the optimizer updates."""
    clusters = model.task_map.clusters
    return [c for c in clusters if not any(p.requires_grad for p in model.cluster_parameters(c))]


def base_param_bytes(model: CGCModel) -> tuple[int, int]:
    """Bytes of the frozen base: in all, and held by this rank (ZeRO-3 keeps only a partition, `ds_tensor`)."""
    adapter = {id(p) for _, p in model.trainable_parameters()}
    total = local = 0
    for p in model.parameters():
        if id(p) in adapter:
            continue
        total += getattr(p, "ds_numel", p.numel()) * p.element_size()
        local += (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * p.element_size()
    return total, local
