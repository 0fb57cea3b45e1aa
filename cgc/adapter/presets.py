"""The methods of the comparison as configurations of the same layer: the CGC-LoRA paper's baselines, and the
controls that take one piece of CGC-LoRA away.

| method                | clusters            | shared experts          | own experts | gate      |
|-----------------------|---------------------|-------------------------|-------------|-----------|
| `shared_lora`         | 1 (all tasks)       | 1                       | 0           | trivial   |
| `per_task_lora`       | one per task        | 0                       | 1           | trivial   |
| `moelora`             | 1 (all tasks)       | E                       | 0           | task gate |
| `cgc_lora`            | the user's clusters | S                       | K           | task gate |
| `cgc_no_gate`         | the user's clusters | S                       | K           | uniform   |
| `moelora_per_cluster` | the user's clusters | CGC-LoRA's experts per cluster | 0    | task gate |
| `cgc_one_cluster`     | 1 (all tasks)       | S                       | K           | task gate |
| `cgc_task_clusters`   | one per task        | S                       | K           | task gate |

`matched_budget` builds them with one of two budgets, as near as integer ranks allow. `trainable`: the same total
expert rank per adapted layer, i.e. the same trainable LoRA parameters (gate logits add a few on top). `served`:
the same rank per task, i.e. every task's exported adapter (what a server holds and computes per request) has
CGC-LoRA's exported rank. No expert gets a rank below `min_rank` (default 4): a rank-1 expert is a comparison of
nothing, so a trainable budget too small for that is raised to the smallest one that gives every method's experts
`min_rank` (`smallest_budget`).
"""

from __future__ import annotations

import dataclasses

from cgc.adapter.config import CGCLoraConfig

ALL_TASKS_CLUSTER = "all"
LABELS = {
    "shared_lora": "LoRA (shared)",
    "per_task_lora": "per-task LoRA",
    "moelora": "MOELoRA",
    "cgc_lora": "CGC-LoRA",
    "cgc_no_gate": "CGC-LoRA, uniform gate",
    "moelora_per_cluster": "MOELoRA per cluster",
    "cgc_one_cluster": "CGC-LoRA, one cluster",
    "cgc_task_clusters": "CGC-LoRA, a cluster per task",
}
BASELINES = ("shared_lora", "per_task_lora", "moelora", "cgc_lora")
CONTROLS = ("cgc_no_gate", "moelora_per_cluster", "cgc_one_cluster", "cgc_task_clusters")  # variants of cgc_lora
# Controls with another cluster map than CGC-LoRA's. The sampler trains one cluster per micro-step, and Adam
# scales a step by 1/sqrt(the share of steps whose gradient reaches the parameter): at the same lr an expert
# of one of 3 clusters moves ~1.7x as far per gradient as an expert every step reaches (docs/experiments.md,
# 2026-12-07). The same lr is then another step size, so these take an lr of their own, like the baselines.
CLUSTER_MAPS = ("cgc_one_cluster", "cgc_task_clusters")
MATCHES = ("trainable", "served")


def takes_our_lr(method: str, methods) -> bool:
    """Whether `method` trains at CGC-LoRA's lr in a comparison of `methods`: a control that keeps CGC-LoRA's
    cluster map, beside CGC-LoRA (the pairing is the control: one piece taken away at the same step size)."""
    return method in CONTROLS and method not in CLUSTER_MAPS and "cgc_lora" in methods


def shared_lora(tasks: list[str], r: int, **common) -> CGCLoraConfig:
    """One LoRA of rank r shared by every task."""
    return CGCLoraConfig(
        clusters={ALL_TASKS_CLUSTER: list(tasks)}, r=r, num_shared_experts=1, num_task_experts=0, **common
    )


def per_task_lora(tasks: list[str], r: int, **common) -> CGCLoraConfig:
    """An independent LoRA of rank r per task (one cluster per task, named after it)."""
    return CGCLoraConfig(clusters={t: [t] for t in tasks}, r=r, num_shared_experts=0, num_task_experts=1, **common)


def moelora(tasks: list[str], num_experts: int, r: int, **common) -> CGCLoraConfig:
    """MOELoRA: `num_experts` experts shared by all tasks, mixed by a task-driven gate."""
    return CGCLoraConfig(
        clusters={ALL_TASKS_CLUSTER: list(tasks)},
        r=r,
        num_shared_experts=num_experts,
        num_task_experts=0,
        **common,
    )


def cgc_lora(clusters: dict[str, list[str]], num_shared: int, num_task: int, r: int, **common) -> CGCLoraConfig:
    return CGCLoraConfig(clusters=clusters, r=r, num_shared_experts=num_shared, num_task_experts=num_task, **common)


def total_rank(config: CGCLoraConfig) -> int:
    """Sum of the ranks of all experts on one layer: LoRA parameters per layer = total_rank * (d_in + d_out)."""
    return sum(config.cluster_rank(c) for c in config.clusters)


def method_shape(config: CGCLoraConfig) -> dict:
    """What a comparison reports of a method's configuration: expert rank, experts and total rank per layer,
    each task's served (exported) rank, clusters."""
    return {
        "r": config.r,
        "experts_per_layer": sum(config.num_experts(c) for c in config.clusters),
        "total_rank": total_rank(config),
        "served_rank": config.exported_rank,
        "clusters": len(config.clusters),
    }


def experts_per_layer(clusters: dict[str, list[str]], num_shared: int, num_task: int, moe_experts: int) -> dict:
    """Experts on one adapted layer of each method."""
    tasks = sum(len(ts) for ts in clusters.values())
    cgc_experts = sum(num_shared + num_task * len(ts) for ts in clusters.values())
    return {
        "shared_lora": 1,
        "per_task_lora": tasks,
        "moelora": moe_experts,
        "cgc_lora": cgc_experts,
        "cgc_no_gate": cgc_experts,
        "moelora_per_cluster": per_cluster_experts(clusters, num_shared, num_task) * len(clusters),
        "cgc_one_cluster": num_shared + num_task * tasks,
        "cgc_task_clusters": tasks * (num_shared + num_task),
    }


def per_cluster_experts(clusters: dict[str, list[str]], num_shared: int, num_task: int) -> int:
    """MOELoRA per cluster: CGC-LoRA's experts per cluster on average, all shared by the cluster's tasks."""
    return max(1, round(sum(num_shared + num_task * len(ts) for ts in clusters.values()) / len(clusters)))


def variant_clusters(method: str, clusters: dict[str, list[str]]) -> dict[str, list[str]]:
    """The clusters of a CGC-shaped method (cgc_lora and the variants that keep S shared and K own experts)."""
    tasks = [t for ts in clusters.values() for t in ts]
    return {"cgc_one_cluster": {ALL_TASKS_CLUSTER: tasks}, "cgc_task_clusters": {t: [t] for t in tasks}}.get(
        method, clusters
    )


def rank_rows(clusters: dict[str, list[str]], num_shared: int, num_task: int, ratio: tuple[int, int]) -> int:
    """Rank rows per layer of a CGC shape whose shared and own experts have ranks ratio[0] : ratio[1] (times 1)."""
    tasks = sum(len(ts) for ts in clusters.values())
    return num_shared * len(clusters) * ratio[0] + num_task * tasks * ratio[1]


CGC_SHAPED = ("cgc_lora", "cgc_no_gate", "cgc_one_cluster", "cgc_task_clusters")


def smallest_budget(
    clusters: dict[str, list[str]],
    num_shared: int,
    num_task: int,
    moe_experts: int,
    min_rank: int,
    rank_ratio: tuple[int, int] = (1, 1),
    methods: tuple[str, ...] = BASELINES,
) -> int:
    """The smallest total rank per layer at which every expert of `methods` gets rank >= `min_rank`."""
    experts = experts_per_layer(clusters, num_shared, num_task, moe_experts)
    times = -(-min_rank // min(rank_ratio))  # the multiple of the ratio that gives the smaller rank min_rank
    needs = [
        times * rank_rows(variant_clusters(m, clusters), num_shared, num_task, rank_ratio)
        if m in CGC_SHAPED
        else min_rank * experts[m]
        for m in methods
    ]
    return max(needs)


def matched_budget(
    clusters: dict[str, list[str]],
    budget_rank: int,
    num_shared: int = 2,
    num_task: int = 1,
    moe_experts: int = 4,
    min_rank: int = 4,
    match: str = "trainable",
    methods: tuple[str, ...] = BASELINES,
    rank_ratio: tuple[int, int] = (1, 1),
    **common,
) -> dict[str, CGCLoraConfig]:
    """`methods` (names of LABELS) at one budget, as near as integer ranks allow.

    CGC-LoRA is the same under both budgets: its shared and own experts have ranks in the ratio `rank_ratio` (1:1
    unless the user's config gives them r_shared and r_task), scaled to fill the budget: `budget_rank`, raised to
    `smallest_budget(...)` when that is larger (compare the two to tell the user). `match="trainable"`: every other
    method fills the same budget (expert rank = budget // its experts; its variants scale the same ratio), and shared
    LoRA gets CGC-LoRA's total rank exactly (its trainable LoRA parameters: "one bigger LoRA instead of experts").
    `match="served"`: every method serves each task at CGC-LoRA's exported rank R = S r_shared + K r_task: shared
    and per-task LoRA of rank R, MOELoRA's E experts of rank R // E; CGC-LoRA's variants keep its expert ranks.
    """
    if budget_rank < 1 or min_rank < 1:
        raise ValueError(f"budget_rank and min_rank must be >= 1, got {budget_rank} and {min_rank}")
    if match not in MATCHES:
        raise ValueError(f"match must be one of {MATCHES}, got {match!r}")
    unknown = [m for m in methods if m not in LABELS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; methods: {list(LABELS)}")
    shape = (num_shared, num_task, moe_experts, min_rank, rank_ratio)
    # The controls do not raise it: CGC-LoRA is the same model whichever controls it is compared with (a control may
    # get experts below min_rank, which its row shows).
    graded = tuple(dict.fromkeys([*(m for m in methods if m not in CONTROLS), "cgc_lora"]))
    budget = max(budget_rank, smallest_budget(clusters, *shape, methods=graded))
    experts = experts_per_layer(clusters, num_shared, num_task, moe_experts)
    tasks = [t for ts in clusters.values() for t in ts]

    def cgc_shaped(method: str, times: int | None = None) -> CGCLoraConfig:
        shape = variant_clusters(method, clusters)
        times = times or max(1, budget // rank_rows(shape, num_shared, num_task, rank_ratio))
        r_shared, r_task = rank_ratio[0] * times, rank_ratio[1] * times
        config = cgc_lora(shape, num_shared, num_task, r=r_shared if num_shared else r_task, **common)
        if r_shared != r_task:
            config = dataclasses.replace(config, r_shared=r_shared, r_task=r_task)
        return dataclasses.replace(config, train_gate=False) if method == "cgc_no_gate" else config

    ours = cgc_shaped("cgc_lora")
    ours_times = ours.task_rank // rank_ratio[1] if num_task else ours.shared_rank // rank_ratio[0]
    served = ours.exported_rank
    per_cluster = per_cluster_experts(clusters, num_shared, num_task)
    trainable = match == "trainable"

    def rank(method: str) -> int:  # the expert rank of a method that is not CGC-shaped
        if method == "shared_lora":
            return total_rank(ours) if trainable else served
        if not trainable:
            return max(
                1, {"per_task_lora": served, "moelora": served // moe_experts}.get(method, served // per_cluster)
            )
        return max(1, budget // experts[method])

    build = {
        "shared_lora": lambda: shared_lora(tasks, r=rank("shared_lora"), **common),
        "per_task_lora": lambda: per_task_lora(tasks, r=rank("per_task_lora"), **common),
        "moelora": lambda: moelora(tasks, moe_experts, r=rank("moelora"), **common),
        "moelora_per_cluster": lambda: cgc_lora(clusters, per_cluster, 0, r=rank("moelora_per_cluster"), **common),
    }
    return {m: build[m]() if m in build else cgc_shaped(m, None if trainable else ours_times) for m in methods}
