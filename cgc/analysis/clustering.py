"""Propose a task-cluster map from measured task affinity.

    python -m cgc cluster --model smollm2-135m-instruct --data recipes/data/demo/train.jsonl --num-clusters 3

Affinity of two tasks = cosine similarity of their gradients with respect to one LoRA shared by all tasks,
measured after a few warm-up steps of that LoRA on a mix of all tasks (at step 0, B = 0 and the gradients only
reflect the random A). Tasks whose gradients point the same way would pull a shared adapter the same way and
can share experts; tasks whose gradients disagree (negative cosine: a step for one raises the other's loss, the
"conflicting gradients" of PCGrad) are the ones that seesaw and belong apart. Clusters are formed by
average-linkage agglomeration on that similarity. Users can always write the map by hand.

Why the default threshold is 0 (clusters merge while their mean cross-affinity is not negative, so only groups
that conflict on average stay apart) rather than a high cosine: splitting is not free. The sampler trains one
cluster per step, so a cluster's experts get a gradient only on the steps that draw it (about 1/C of them with C
clusters of as many tasks; a cluster's share is the sum of its tasks', `sampler.mixing`), and shared experts see
only their cluster's data. Orthogonal gradients (cosine ~ 0) do not pull a shared adapter against each other, so only
conflict is a reason to pay that. On both demo variants one cluster of all nine tasks, at its step-matched lr,
scored above the hand-written three, and a cluster per task scored lowest (docs/experiments.md, 2026-12-06 and
2026-12-07).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch

from cgc.adapter.model import attach
from cgc.adapter.presets import shared_lora
from cgc.data.tokenization import MultiTaskCollator, encode_example

DEFAULT_THRESHOLD = 0.0  # merge while the closest clusters' mean affinity is >= this: groups that conflict stay apart


def task_gradients(
    base_model,
    tokenizer,
    examples_by_task: Mapping[str, Sequence[dict]],
    target_modules: list[str] | str | None = None,
    r: int = 4,
    warmup_steps: int = 10,
    lr: float = 1e-3,
    batch_size: int = 8,
    max_length: int = 256,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Flattened mean gradient of each task's loss w.r.t. a shared LoRA (attached to `base_model` in place)."""
    tasks = list(examples_by_task)
    model = attach(base_model, shared_lora(tasks, r=r, target_modules=target_modules or ["q_proj", "v_proj"]))
    model.train()
    params = [p for _, p in model.trainable_parameters()]
    collate = MultiTaskCollator(tokenizer.pad_token_id)
    rng = random.Random(seed)
    torch.manual_seed(seed)

    def loss_of(task_examples: list[tuple[str, dict]]) -> torch.Tensor:
        features = []
        for task, ex in task_examples:
            encoded = encode_example(tokenizer, ex["input"], ex["target"], max_length)
            if not encoded["dropped"]:
                features.append({**encoded, "task_id": model.task_id(task)})
        if not features:
            raise ValueError(f"every example of {sorted({t for t, _ in task_examples})} is longer than max_length")
        return model(**collate(features)).loss

    pool = [(t, ex) for t, exs in examples_by_task.items() for ex in exs]
    optimizer = torch.optim.AdamW(params, lr=lr)
    for _ in range(warmup_steps):
        loss_of(rng.sample(pool, min(batch_size, len(pool)))).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    gradients = {}
    for task, exs in examples_by_task.items():
        for start in range(0, len(exs), batch_size):
            chunk = [(task, ex) for ex in exs[start : start + batch_size]]
            # Each chunk's (token-mean) loss weighted by its share of the task's examples.
            (loss_of(chunk) * len(chunk) / len(exs)).backward()
        gradients[task] = torch.cat([p.grad.detach().flatten() for p in params])
        optimizer.zero_grad(set_to_none=True)
    return gradients


def affinity_matrix(gradients: Mapping[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
    tasks = list(gradients)
    g = torch.stack([gradients[t] for t in tasks])  # (T, P)
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return tasks, g @ g.T  # (T, T) cosine similarities


def agglomerate(
    tasks: list[str], similarity: torch.Tensor, num_clusters: int | None = None, threshold: float = DEFAULT_THRESHOLD
):
    """Average-linkage merging: down to `num_clusters`, or while the closest pair's mean similarity >= threshold."""
    if num_clusters is not None and not 1 <= num_clusters <= len(tasks):
        raise ValueError(f"num_clusters must be in [1, {len(tasks)}], got {num_clusters}")
    groups = [[i] for i in range(len(tasks))]

    def link(a, b):
        return similarity[a][:, b].mean().item()

    while len(groups) > 1:
        pairs = [(link(a, b), i, j) for i, a in enumerate(groups) for j, b in enumerate(groups) if i < j]
        best, i, j = max(pairs)
        if num_clusters is not None and len(groups) <= num_clusters:
            break
        if num_clusters is None and best < threshold:
            break
        groups[i] = groups[i] + groups[j]
        del groups[j]
    groups.sort(key=min)
    return {f"cluster{k}": [tasks[i] for i in sorted(g)] for k, g in enumerate(groups)}


def cluster_tasks(
    base_model,
    tokenizer,
    examples_by_task: Mapping[str, Sequence[dict]],
    num_clusters: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    **gradient_kwargs,
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """-> (cluster map, task x task cosine affinity). `base_model` gets a LoRA attached: pass a fresh one."""
    gradients = task_gradients(base_model, tokenizer, examples_by_task, **gradient_kwargs)
    tasks, similarity = affinity_matrix(gradients)
    clusters = agglomerate(tasks, similarity, num_clusters=num_clusters, threshold=threshold)
    affinity = {a: {b: round(similarity[i, j].item(), 4) for j, b in enumerate(tasks)} for i, a in enumerate(tasks)}
    return clusters, affinity


def sample_by_task(rows, per_task: int, seed: int) -> dict[str, list[dict]]:
    """Up to `per_task` examples of each task (seeded), tasks in name order: what the affinity is measured on."""
    rng = random.Random(seed)
    by_task: dict[str, list[dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    return {t: rng.sample(rows, min(per_task, len(rows))) for t, rows in sorted(by_task.items())}


def affinity_table(affinity: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The task x task affinity as comment lines (columns numbered like the rows), for a user to judge the map."""
    tasks = list(affinity)
    width = max(len(t) for t in tasks)
    lines = ["# task gradient affinity (cosine; below 0 the tasks conflict):"]
    lines.append("#    " + " " * width + "".join(f"{j:>7}" for j in range(len(tasks))))
    for i, a in enumerate(tasks):
        lines.append(f"# {i:>2} {a:<{width}}" + "".join(f"{affinity[a][b]:>7.2f}" for b in tasks))
    return lines


def to_yaml(clusters: Mapping[str, Sequence[str]], affinity: Mapping[str, Mapping[str, float]]) -> str:
    import yaml

    lines = ["# proposed by cgc.analysis.clustering (gradient cosine affinity); paste under `cgc:` in a recipe config"]
    lines += affinity_table(affinity)
    for name, tasks in clusters.items():
        inside = [affinity[a][b] for a in tasks for b in tasks if a < b]
        mean = f"{sum(inside) / len(inside):.2f}" if inside else "n/a"
        lines.append(f"# {name}: mean within-cluster affinity {mean}")
    if len(clusters) > 1:
        lines.append(
            f"# each training step draws one cluster (sampler.mixing): a cluster's experts train only on the steps that"
            f" draw it, its tasks' share of them (1/{len(clusters)} with {len(clusters)} clusters of as many tasks)"
        )
        # Why a pointer, not a verdict: on both demo variants one cluster of every task scored above every map this
        # tool proposed, conflicts included (docs/experiments.md, ninth session, one seed each): cosines measured at
        # one warm-up point did not predict whether a split pays there; a comparison on the user's data does.
        lines.append(
            "# whether this split beats one cluster of every task is measured, not predicted by these cosines:"
            " python recipes/compare.py --config YOUR.yaml --methods cgc_lora,cgc_one_cluster (this map in YOUR.yaml;"
            " the report pairs CGC-LoRA against one cluster)"
        )
    lines.append(
        yaml.safe_dump(
            {"clusters": {k: list(v) for k, v in clusters.items()}}, sort_keys=False, default_flow_style=None
        ).rstrip()
    )
    return "\n".join(lines)
