"""The baselines of the CGC-LoRA paper as configurations of the same layer.

| method        | clusters            | S | K | gate      |
|---------------|---------------------|---|---|-----------|
| shared LoRA   | 1 (all tasks)       | 1 | 0 | trivial   |
| per-task LoRA | one per task        | 0 | 1 | trivial   |
| MOELoRA       | 1 (all tasks)       | E | 0 | task gate |
| CGC-LoRA      | the user's clusters | S | K | task gate |

`matched_budget` builds all four with (as near as integer ranks allow) the same total expert rank, i.e. the
same number of LoRA parameters on every adapted layer; gate logits add a few parameters on top. No expert gets a
rank below `min_rank` (default 4): a rank-1 expert is a comparison of nothing, so a budget too small for that is
raised to the smallest one that gives every method's experts `min_rank` (`smallest_budget`).
"""

from __future__ import annotations

from cgc.adapter.config import CGCLoraConfig

ALL_TASKS_CLUSTER = "all"


def _alpha(r: int, common: dict) -> dict:
    # Unless the caller fixes alpha, keep scaling = alpha / r = 2 for every rank so methods compare fairly.
    return {"alpha": 2.0 * r, **common}


def shared_lora(tasks: list[str], r: int, **common) -> CGCLoraConfig:
    """One LoRA of rank r shared by every task."""
    return CGCLoraConfig(
        clusters={ALL_TASKS_CLUSTER: list(tasks)}, r=r, num_shared_experts=1, num_task_experts=0, **_alpha(r, common)
    )


def per_task_lora(tasks: list[str], r: int, **common) -> CGCLoraConfig:
    """An independent LoRA of rank r per task (one cluster per task, named after it)."""
    return CGCLoraConfig(
        clusters={t: [t] for t in tasks}, r=r, num_shared_experts=0, num_task_experts=1, **_alpha(r, common)
    )


def moelora(tasks: list[str], num_experts: int, r: int, **common) -> CGCLoraConfig:
    """MOELoRA: `num_experts` experts shared by all tasks, mixed by a task-driven gate."""
    return CGCLoraConfig(
        clusters={ALL_TASKS_CLUSTER: list(tasks)},
        r=r,
        num_shared_experts=num_experts,
        num_task_experts=0,
        **_alpha(r, common),
    )


def cgc_lora(clusters: dict[str, list[str]], num_shared: int, num_task: int, r: int, **common) -> CGCLoraConfig:
    return CGCLoraConfig(
        clusters=clusters, r=r, num_shared_experts=num_shared, num_task_experts=num_task, **_alpha(r, common)
    )


def total_rank(config: CGCLoraConfig) -> int:
    """Sum of the ranks of all experts on one layer: LoRA parameters per layer = total_rank * (d_in + d_out)."""
    return config.r * sum(config.num_experts(c) for c in config.clusters)


def method_shape(config: CGCLoraConfig) -> dict:
    """What a comparison reports of a method's configuration: expert rank, experts and total rank per layer,
    clusters."""
    return {
        "r": config.r,
        "experts_per_layer": sum(config.num_experts(c) for c in config.clusters),
        "total_rank": total_rank(config),
        "clusters": len(config.clusters),
    }


def experts_per_layer(clusters: dict[str, list[str]], num_shared: int, num_task: int, moe_experts: int) -> dict:
    """Experts on one adapted layer of each method."""
    tasks = sum(len(ts) for ts in clusters.values())
    cgc_experts = sum(num_shared + num_task * len(ts) for ts in clusters.values())
    return {"shared_lora": 1, "per_task_lora": tasks, "moelora": moe_experts, "cgc_lora": cgc_experts}


def smallest_budget(clusters: dict[str, list[str]], num_shared: int, num_task: int, moe_experts: int, min_rank: int):
    """The smallest total rank per layer at which every method's experts get rank >= `min_rank`."""
    return min_rank * max(experts_per_layer(clusters, num_shared, num_task, moe_experts).values())


def matched_budget(
    clusters: dict[str, list[str]],
    budget_rank: int,
    num_shared: int = 2,
    num_task: int = 1,
    moe_experts: int = 4,
    min_rank: int = 4,
    **common,
) -> dict[str, CGCLoraConfig]:
    """The four methods with total expert rank as close to the budget as integer ranks allow.

    The budget is `budget_rank`, raised to `smallest_budget(...)` when that is larger (compare the two to tell
    the user). Each method's per-expert rank is budget // (its number of experts); shared LoRA gets CGC-LoRA's
    total rank exactly, so that it has CGC-LoRA's trainable LoRA parameters: "one bigger LoRA instead of experts".
    """
    if budget_rank < 1 or min_rank < 1:
        raise ValueError(f"budget_rank and min_rank must be >= 1, got {budget_rank} and {min_rank}")
    budget = max(budget_rank, smallest_budget(clusters, num_shared, num_task, moe_experts, min_rank))
    experts = experts_per_layer(clusters, num_shared, num_task, moe_experts)
    tasks = [t for ts in clusters.values() for t in ts]
    ours = cgc_lora(clusters, num_shared, num_task, r=budget // experts["cgc_lora"], **common)
    return {
        "shared_lora": shared_lora(tasks, r=total_rank(ours), **common),
        "per_task_lora": per_task_lora(tasks, r=budget // experts["per_task_lora"], **common),
        "moelora": moelora(tasks, moe_experts, r=budget // moe_experts, **common),
        "cgc_lora": ours,
    }
