"""1+N grows: the config of a trained adapter extended by new tasks, without touching the tasks it already has.

A user writes the cluster map they want: the trained one with tasks appended to its clusters and/or new clusters
after them. `grow` turns it into the model's own map, in which nothing trained moves:

- the trained clusters keep their names, tasks and order, so their parameters keep their names and shapes, their
  tasks keep their ids, and a forward of their tasks computes exactly what it did (same tensors, same kernels);
- tasks appended to a trained cluster `c` form a new cluster `c+1` (`c+2` for the next growth, ...) with
  `extends = {"c+1": "c"}`: it stores only those tasks' own experts and gates, and mixes `c`'s shared experts,
  which stay where they are, frozen (cgc.adapter.layer);
- a new cluster is a cluster like any other.

New clusters come after every trained one, so new tasks take the ids after every trained task (append order).
"""

from __future__ import annotations

import dataclasses

from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.errors import AdapterConfigError

# What decides the trained parameters' shapes, or what their exports say (lora_dropout is in each PEFT config):
# a grown adapter must keep them. gate_init only starts the new gates; the cluster map is what grows.
FIXED_KEYS = ("r", "alpha", "num_shared_experts", "num_task_experts", "dropout", "target_modules", "r_shared",
              "r_task", "scaling", "train_gate")  # fmt: skip


def grow(trained: CGCLoraConfig, wanted: CGCLoraConfig) -> CGCLoraConfig:
    """The config of `trained` extended by the tasks `wanted` adds (`wanted.clusters`: the map a user writes).
    Raises AdapterConfigError listing every refusal: a trained task renamed, moved or dropped, a changed shape key,
    a new cluster named like a grown one, nothing new."""
    problems = [
        f"cgc.{key} is {getattr(wanted, key)!r} but the trained adapter has {getattr(trained, key)!r}"
        for key in FIXED_KEYS
        if getattr(wanted, key) != getattr(trained, key)
    ]
    before, wanted_map = trained.user_clusters(), wanted.user_clusters()  # a grown config's own map reads as its user's
    for cluster, tasks in before.items():
        now = wanted_map.get(cluster)
        if now is None:
            problems.append(f"trained cluster {cluster!r} ({tasks}) is missing from cgc.clusters: keep it")
        elif now[: len(tasks)] != tasks:
            lost = [t for t in tasks if t not in now]
            where = wanted.task_map
            detail = (
                "; ".join(f"{t!r} is in {where.cluster_of(t)!r}" if t in where else f"{t!r} is gone" for t in lost)
                or f"they are listed as {now[: len(tasks)]}"
            )
            problems.append(
                f"cluster {cluster!r} must list its trained tasks {tasks} first, in that order, then new ones "
                f"({detail})"
            )
    taken = set(trained.clusters) | set(wanted_map)
    clusters = {c: list(ts) for c, ts in trained.clusters.items()}
    extends = dict(trained.extends)
    for cluster, tasks in wanted_map.items():
        if cluster not in before:
            if cluster in trained.clusters:
                problems.append(f"new cluster {cluster!r} has the name of a grown part of the trained adapter")
            clusters[cluster] = list(tasks)
            continue
        added = tasks[len(before[cluster]) :]
        if added:
            part = next(f"{cluster}+{n}" for n in range(1, len(taken) + 2) if f"{cluster}+{n}" not in taken)
            taken.add(part)
            clusters[part], extends[part] = list(added), cluster
    if not problems and clusters == trained.clusters:
        problems.append(f"cgc.clusters adds no task to the trained adapter's {before}")
    if problems:
        raise AdapterConfigError("cgc.clusters cannot grow the trained adapter", problems)
    return dataclasses.replace(trained, clusters=clusters, extends=extends, gate_init=wanted.gate_init)


def new_clusters(trained: CGCLoraConfig, grown: CGCLoraConfig) -> list[str]:
    """The clusters of `grown` that `trained` lacks: the only ones a growing run trains."""
    return [c for c in grown.clusters if c not in trained.clusters]


def attach_grown(base_model, trained_path, wanted: CGCLoraConfig):
    """`base_model` with the adapter saved at `trained_path` grown by the tasks `wanted` adds (`grow`): the trained
    parameters loaded and frozen, the new clusters' fresh and trainable. -> (CGCModel, the new clusters)."""
    from cgc.adapter.model import attach

    trained = CGCLoraConfig.load(trained_path)
    config = grow(trained, wanted)
    model = attach(base_model, config)
    load_trained(model, trained_path)
    return model, new_clusters(trained, config)


def load_trained(model, trained_path) -> None:
    """Load the adapter saved at `trained_path` into `model` (a CGCModel of a config grown from it) and freeze what
    it loaded: only the new clusters' parameters keep requires_grad."""
    from cgc.adapter.model import load_weights

    loaded = set(load_weights(model, trained_path, partial=True))
    for name, param in model.trainable_parameters():
        param.requires_grad_(name not in loaded)
