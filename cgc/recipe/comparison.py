"""The inputs of the seesaw comparison (recipes/compare.py), checked before anything trains: the lr grid, the data
split (a validation split carved from training, or given and checked disjoint), the record that keeps a re-run from
mixing two splits, the shared:own rank ratio of the user's CGC-LoRA, and each method's trainable parameters."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

import cgc
from cgc.data import DataError, load_task_examples
from cgc.data.validation_split import carve_validation, check_disjoint
from cgc.models import load_recipe_model
from cgc.recipe.config import RecipeConfig
from cgc.recipe.errors import ConfigError


def parse_grid(text: str) -> list[float]:
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lr_grid: comma-separated learning rates, got {text!r}") from None
    if not grid or min(grid) <= 0:
        raise ConfigError(f"--lr_grid: positive learning rates, got {text!r}")
    return list(dict.fromkeys(grid))  # each lr once, in the order given


def rank_ratio(config: cgc.CGCLoraConfig) -> tuple[int, int]:
    """The ratio of the shared and own experts' ranks in the user's config, in lowest terms (1:1 when equal)."""
    common = np.gcd(config.shared_rank, config.task_rank)
    return config.shared_rank // int(common), config.task_rank // int(common)


def split_data(cfg: RecipeConfig, args, carve: bool) -> dict[str, list[dict]]:
    """-> {"train", "validation", "eval"} rows: validation carved from training, read from --validation_files
    (refused when it shares an example with training or eval), or none (one lr: every training example trains)."""
    d, task_map = cfg.data, cfg.cgc.task_map

    def rows(files) -> list[dict]:
        dataset = load_task_examples(files, task_map, d.format, d.task_field)
        return [{k: row[k] for k in ("task", "input", "target")} for row in dataset]

    evaluation, train, validation = rows(d.eval_files), rows(d.train_files), []
    if args.validation_files:
        validation = rows(args.validation_files.split(","))
        check_disjoint(validation, evaluation, train)
    elif carve:
        train, validation = carve_validation(train, evaluation, args.validation_per_task, cfg.seed)
    missing = sorted(set(task_map.tasks) - {row["task"] for row in train})
    if missing:
        raise DataError(f"no training examples left for {missing} once the validation split is taken out")
    return {"train": train, "validation": validation, "eval": evaluation}


def split_record(cfg: RecipeConfig, args, carved: bool) -> dict:
    """What decides the data files under <out>/data: a re-run with other values would mix two splits."""
    d = cfg.data
    return {"train_files": d.train_files, "eval_files": d.eval_files, "format": d.format, "task_field": d.task_field,
            "seed": cfg.seed, "validation_per_task": args.validation_per_task,
            "validation_files": args.validation_files,
            "carved": carved}  # fmt: skip


def check_split_record(path: Path, record: dict) -> None:
    if path.is_file() and json.loads(path.read_text()) != record:
        raise ConfigError(
            f"{path.parent} holds a split made with other data settings ({json.loads(path.read_text())}); its runs "
            "were trained on it: use another --out, or remove that directory to start over"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def trainable_counts(cfg, configs: dict[str, cgc.CGCLoraConfig]) -> dict[str, int]:
    """Trainable parameters of each method, counted on the real base model (float: the counts do not depend on
    quantization). Attaching changes the model it is given, hence a copy per method."""
    m = cfg.model
    base, _ = load_recipe_model(m.name_or_path, m.gguf_file, "none", "float32", seed=cfg.seed)
    return {name: cgc.attach(copy.deepcopy(base), c).num_trainable_parameters() for name, c in configs.items()}
