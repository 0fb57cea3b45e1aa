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
FIXED_KEYS = ("r", "alpha", "num_shared_experts", "num_task_experts", "dropout", "target_modules", "shared_rank",
              "task_rank", "scaling", "train_gate")  # fmt: skip
SHOWN = {"shared_rank": "r_shared", "task_rank": "r_task"}  # the keys a user writes for them


def grow(trained: CGCLoraConfig, wanted: CGCLoraConfig) -> CGCLoraConfig:
    """The config of `trained` extended by the tasks `wanted` adds (`wanted.clusters`: the map a user writes, or a
    config `grow` made from `trained`, which gives the same result). Raises AdapterConfigError listing every
    refusal: a trained task renamed, moved or dropped, a changed shape key, a task added to a trained cluster that
    could not hold it, a new cluster named like a grown part, nothing new."""
    problems = [
        f"cgc.{SHOWN.get(key, key)} is {fixed(wanted, key)!r} but the trained adapter has {fixed(trained, key)!r}"
        for key in FIXED_KEYS
        if fixed(wanted, key) != fixed(trained, key)
    ]
    before = trained.user_clusters()
    problems += order_problems(before, wanted)
    taken = set(trained.clusters) | set(wanted.user_clusters())
    clusters = {c: list(ts) for c, ts in trained.clusters.items()}
    extends = dict(trained.extends)
    # in wanted's own order: a grown config fed back (a run's config.yaml) keeps its clusters' order, so its ids
    for entry, tasks in wanted.clusters.items():
        parent = wanted.extends.get(entry, entry)
        if parent not in before:
            if entry in trained.clusters:
                problems.append(f"new cluster {entry!r} has the name of a grown part of the trained adapter")
            clusters[entry] = list(tasks)
            continue
        added = [t for t in tasks if t not in before[parent]]
        if added and not (trained.num_shared_experts and trained.num_task_experts):
            problems.append(
                f"tasks {added} cannot join trained cluster {parent!r}: with S={trained.num_shared_experts} shared "
                f"and K={trained.num_task_experts} own experts a task there would have "
                + ("nothing to share; add them as a new cluster" if trained.num_task_experts else "no expert to train")
            )
        elif added:
            part = next(f"{parent}+{n}" for n in range(1, len(taken) + 2) if f"{parent}+{n}" not in taken)
            taken.add(part)
            clusters[part], extends[part] = added, parent
    if not problems and clusters == trained.clusters:
        problems.append(f"cgc.clusters adds no task to the trained adapter's {before}")
    if problems:
        raise AdapterConfigError("cgc.clusters cannot grow the trained adapter", problems)
    return dataclasses.replace(trained, clusters=clusters, extends=extends, gate_init=wanted.gate_init)


def fixed(config: CGCLoraConfig, key: str):
    """A FIXED_KEYS value as it decides shapes: ranks resolved (r_shared: null is r), target names in any order."""
    value = getattr(config, key)
    return sorted(value) if key == "target_modules" and isinstance(value, list) else value


def order_problems(before: dict[str, list[str]], wanted: CGCLoraConfig) -> list[str]:
    """Each trained cluster must list its trained tasks first, in their order (their ids and experts follow it)."""
    problems, wanted_map = [], wanted.user_clusters()
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
    return problems


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


def load_trained(model, trained_path, extend_shared: bool = False) -> None:
    """Load the adapter saved at `trained_path` into `model` (a CGCModel of a config grown from it) and freeze what
    it loaded: only the new clusters' parameters keep requires_grad, and with `extend_shared` the shared experts of
    the trained clusters that tasks are appended to (`train_shared_experts`)."""
    from cgc.adapter.model import load_weights

    loaded = set(load_weights(model, trained_path, partial=True))
    for name, param in model.trainable_parameters():
        param.requires_grad_(name not in loaded)
    if extend_shared:
        train_shared_experts(model, extended_clusters(CGCLoraConfig.load(trained_path), model.cgc_config))


def extended_clusters(trained: CGCLoraConfig, grown: CGCLoraConfig) -> list[str]:
    """The trained clusters that `grown` appends tasks to (the clusters its new parts extend), in map order."""
    parents = {grown.extends[c] for c in new_clusters(trained, grown) if c in grown.extends}
    return [c for c in grown.clusters if c in parents]


def tasks_sharing(config: CGCLoraConfig, cluster: str) -> list[str]:
    """Every task that mixes the shared experts of `cluster`: its own and those of every part extending it."""
    return [t for c, ts in config.clusters.items() if c == cluster or config.extends.get(c) == cluster for t in ts]


def train_shared_experts(model, clusters: list[str]) -> None:
    """train.extend_shared: the shared experts of the trained `clusters` train again (with the tasks appended to
    them), their own tasks' experts and gates stay frozen. Each such cluster's stacked tensors train with their
    own-expert rows detached (ClusterExperts.shared_train_only). Every task of those clusters (`tasks_sharing`)
    changes."""
    for layer in model.adapted_layers().values():
        for cluster in clusters:
            experts = layer.experts[cluster]
            experts.shared_train_only = True
            experts.lora_A.requires_grad_(True)
            experts.lora_B.requires_grad_(True)
