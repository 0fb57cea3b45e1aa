"""A run with `init_from`: the trained adapter grown by the tasks the config's cluster map adds (cgc.adapter.growth),
checked before any model loads. Only the new clusters train; the run's data must be the new tasks' alone."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.errors import CGCError
from cgc.adapter.growth import grow, new_clusters
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
    new_clusters: list[str]  # the clusters this run adds, the only ones it trains


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
    return dataclasses.replace(cfg, cgc=grown), Growth(trained, new_clusters(trained, grown))


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
    """The trained tasks' experts are frozen: their examples would train nothing. Refused, naming them."""
    old = sorted(t for t in counts if t in growth.trained.task_map)
    if old:
        raise ConfigError(
            f"the training data holds examples of tasks init_from already trained ({old}): their experts are frozen, "
            "so those examples would train nothing. Give the new tasks' data only"
        )
