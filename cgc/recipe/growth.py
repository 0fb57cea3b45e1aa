"""A run with `init_from`: the trained adapter grown by the tasks the config's cluster map adds (cgc.adapter.growth),
checked before any model loads. Only the new clusters train, and the run's data is the new tasks' alone; with
train.extend_shared the shared experts of the trained clusters it appends tasks to train too, and their old tasks'
data may come along as replay."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.errors import CGCError
from cgc.adapter.growth import extended_clusters, grow, new_clusters, tasks_sharing
from cgc.adapter.model import ADAPTER_WEIGHTS_NAME
from cgc.recipe.errors import ConfigError
from cgc.training.distributed import print0
from cgc.training.run_dir import IDENTITY_FILE, check_weights

# the frozen base the trained experts were fitted to: another one (or another precision of it) changes what the
# trained tasks compute
BASE_KEYS = ("model.name_or_path", "model.gguf_file", "model.quantization", "model.dtype")


@dataclasses.dataclass(frozen=True)
class Growth:
    trained: CGCLoraConfig  # the adapter at init_from
    new_clusters: list[str]  # the clusters this run adds: every parameter of them trains
    extended_shared: list[str] = dataclasses.field(default_factory=list)  # train.extend_shared: trained clusters
    changed_tasks: list[str] = dataclasses.field(default_factory=list)  # whose shared experts train; their tasks


def grown_config(cfg):
    """`cfg` (a RecipeConfig with init_from) with its `cgc` section replaced by the grown adapter's config.
    -> (that RecipeConfig, Growth). Raises ConfigError naming every refusal."""
    path = Path(cfg.init_from)
    if path.resolve().is_relative_to(Path(cfg.output_dir).resolve()):
        raise ConfigError(
            f"init_from {path} is inside output_dir {cfg.output_dir}: give the grown run an output_dir of its own "
            "(overwrite or a new run there would move or replace the adapter it grows from)"
        )
    try:
        trained = CGCLoraConfig.load(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"init_from {path}: {err}") from None
    try:
        check_weights(path / ADAPTER_WEIGHTS_NAME)
    except CGCError as err:
        raise ConfigError(f"init_from {path}: {err}") from None
    try:
        grown = grow(trained, cfg.cgc)
    except CGCError as err:
        raise ConfigError(f"init_from {path}: {err.message}", err.problems) from None
    check_base_model(cfg, path)
    growth = Growth(trained, new_clusters(trained, grown))
    if cfg.train.extend_shared:
        extended = extended_clusters(trained, grown)
        if not extended:
            raise ConfigError(
                "train.extend_shared: true, but cgc.clusters appends no task to a trained cluster (new clusters "
                "train all their experts anyway): set it false"
            )
        changed = [t for c in extended for t in tasks_sharing(grown, c) if t in trained.task_map]
        growth = dataclasses.replace(growth, extended_shared=extended, changed_tasks=changed)
        print0(
            f"train.extend_shared: the shared experts of trained clusters {extended} train with the tasks appended "
            f"to them: every task of those clusters changes, {changed} included (their exports are rewritten)",
            file=sys.stderr,
        )
    return dataclasses.replace(cfg, cgc=grown), growth


def check_base_model(cfg, adapter: Path) -> None:
    """The base model of the run that trained `adapter` (its cgc_run.json, two levels up) must be this run's."""
    identity = adapter.parent.parent / IDENTITY_FILE
    if not identity.is_file():
        print0(
            f"warning: init_from {adapter} is not inside a run directory ({identity} not found): cannot check that "
            "it was trained on this base model",
            file=sys.stderr,
        )
        return
    try:
        saved = json.loads(identity.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"init_from {adapter}: cannot read the run identity {identity}: {err}") from None
    now = {key: getattr(cfg.model, key.split(".")[1]) for key in BASE_KEYS}
    changed = [f"{k}: {saved.get(k)!r} there, {now[k]!r} here" for k in BASE_KEYS if saved.get(k) != now[k]]
    if changed:
        raise ConfigError(f"init_from {adapter} was trained on another base model", changed)


def check_new_tasks_only(growth: Growth, counts: dict[str, int]) -> None:
    """The trained tasks' experts are frozen: their examples would train nothing, unless they mix shared experts
    that train (train.extend_shared), where they are replay. Anything else is refused, naming the tasks."""
    old = sorted(t for t in counts if t in growth.trained.task_map and t not in growth.changed_tasks)
    if old and growth.extended_shared:
        raise ConfigError(
            f"the training data holds examples of tasks init_from already trained ({old}) that mix none of the "
            f"shared experts this run trains (those of {growth.extended_shared}): their examples would train "
            "nothing. Remove them"
        )
    if old:
        raise ConfigError(
            f"the training data holds examples of tasks init_from already trained ({old}): their experts are frozen, "
            "so those examples would train nothing. Give the new tasks' data only (or, to train the shared experts "
            "of a cluster you append tasks to with replay of its tasks, train.extend_shared: true)"
        )
