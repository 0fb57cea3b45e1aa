"""The inputs of the seesaw comparison (recipes/compare.py), checked before anything trains: the lr grid, the data
split (a validation split carved from training, or given and checked disjoint), the record that keeps a re-run from
mixing two splits, the shared:own rank ratio of the user's CGC-LoRA, each method's trainable parameters, and the
Plan that holds them all."""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np

import cgc
from cgc.adapter.presets import LABELS, takes_our_lr
from cgc.analysis.report import OURS
from cgc.data import DataError, load_task_examples
from cgc.data.validation_split import carve_validation, check_disjoint
from cgc.evaluation import task_metrics
from cgc.models import load_recipe_model
from cgc.recipe.config import RecipeConfig
from cgc.recipe.errors import ConfigError


def parse_arguments(argv: list[str] | None, description: str) -> argparse.Namespace:
    """compare.py's command line."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", help="report dir (default: <output_dir>/compare)")
    parser.add_argument("--methods", default=",".join(LABELS), help=f"comma-separated subset of {list(LABELS)}")
    parser.add_argument("--match", default="trainable,served", help="the budgets: trainable, served or both")
    parser.add_argument(
        "--served_lr", choices=("tuned", "trainable"), default="tuned",
        help="served budget: a grid per method (tuned), or each method's lr from the trainable budget",
    )  # fmt: skip
    parser.add_argument("--budget_rank", type=int, help="total expert rank per layer (default: the config's CGC)")
    parser.add_argument("--min_rank", type=int, default=4, help="no expert below this rank: raises the budget")
    parser.add_argument("--moe_experts", type=int, default=4, help="MOELoRA's number of experts (default 4)")
    parser.add_argument("--seeds", type=int, default=3, help="final runs per method: seed, seed+1, ... (default 3)")
    parser.add_argument("--lr_grid", default="6.25e-5,1.25e-4,2.5e-4,5e-4,1e-3", help="experts' lrs (one: no grid)")
    parser.add_argument(
        "--lrs", default="",
        help="method=lr,...: these methods take the given lr instead of a grid (e.g. an earlier report's choice)",
    )  # fmt: skip
    parser.add_argument("--grid_steps", type=int, help="steps of each grid run (default: half of train.max_steps)")
    parser.add_argument(
        "--grid_seeds", type=int, default=1,
        help="runs per lr of the grid (seed, seed+1, ...), the choice on their mean: more tell close lrs apart",
    )  # fmt: skip
    parser.add_argument("--gate_lr", type=float, help="the gates' lr in every run (default: the config's gate_lr)")
    parser.add_argument("--validation_per_task", type=int, default=32, help="validation examples carved per task")
    parser.add_argument("--validation_files", help="comma-separated validation files instead of a carved split")
    parser.add_argument("--eval_examples", type=int, default=50, help="eval examples per task (where there are)")
    parser.add_argument("--nproc", type=int, default=1, help="ranks per run (deepspeed launcher when > 1)")
    parser.add_argument(
        "--keep_checkpoints", action="store_true",
        help="keep a finished run's last checkpoint and a grid run's adapters (by default removed: ~0.5 GB a run)",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values), applied to every run")
    return parser.parse_args(argv)


def parse_given_lrs(text: str, methods: list[str]) -> dict[str, float]:
    """--lrs "moelora=5e-4,cgc_lora=1.25e-4" -> {method: lr}: each method once and one of --methods, each lr finite
    and > 0, and no control of CGC-LoRA beside it that takes CGC-LoRA's lr (that pairing is the control; one with
    another cluster map has an lr of its own: cgc.adapter.presets.CLUSTER_MAPS)."""
    given = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        method, _, value = (part.strip() for part in item.partition("="))
        lr = finite_lr(value)
        if method not in methods:
            problem = f"{method!r} is not one of --methods {methods}"
        elif takes_our_lr(method, methods):
            problem = f"{method} is a control of {OURS}: it takes {OURS}'s lr (give that one instead)"
        elif method in given:
            problem = f"{method} is given twice"
        elif lr is None:
            problem = f"{value!r} is not a finite learning rate > 0"
        else:
            given[method] = lr
            continue
        raise ConfigError(f"--lrs: method=lr,...: {problem} (in {item!r})")
    return given


def finite_lr(text: str) -> float | None:
    try:
        lr = float(text)
    except ValueError:
        return None
    return lr if math.isfinite(lr) and lr > 0 else None


def parse_grid(text: str) -> list[float]:
    grid = [finite_lr(v) for v in text.split(",") if v.strip()]
    if not grid or None in grid:
        raise ConfigError(f"--lr_grid: comma-separated finite learning rates > 0, got {text!r}")
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


@dataclass
class Plan:
    """What the comparison runs, decided and checked before any training."""

    args: argparse.Namespace
    cfg: RecipeConfig
    methods: list[str]
    matches: list[str]  # the budgets compared: "trainable", "served"
    grid: list[float]  # the learning rates tried per method (one: no grid)
    given: dict[str, float]  # method -> the lr --lrs gave it: no grid for it
    presets: dict[str, dict[str, cgc.CGCLoraConfig]]  # budget -> method -> its configuration
    budget: int  # total expert rank per adapted layer
    asked: int  # the budget asked for (raised to `budget` when too small for min_rank)
    rows: dict[str, list[dict]]  # "train", "validation", "eval" -> examples
    files: dict[str, Path]  # the same, written under <out>/data
    out: Path
    runs: count  # numbers the runs as they start

    @property
    def gate_lr(self) -> float:
        return self.args.gate_lr or self.cfg.train.gate_lr

    @property
    def metrics(self) -> dict:
        return task_metrics(self.cfg.cgc.tasks, self.cfg.eval.default_metric, self.cfg.eval.metrics)

    @property
    def grid_steps(self) -> int:
        return self.args.grid_steps or max(1, self.cfg.train.max_steps // 2)

    def run_name(self, match: str, method: str) -> str:
        """The method's directory name: plain where its configuration is the trainable budget's."""
        same = self.presets[match][method] == self.presets["trainable"][method]
        return method if match == "trainable" or same else f"{method}@served"

    def tuned(self, method: str, match: str = "trainable") -> bool:
        """Whether the method gets a grid of its own under `match` (a control that keeps CGC-LoRA's cluster map
        takes CGC-LoRA's lr; with --served_lr trainable, a served method takes its trainable lr; --lrs gives a
        method its lr)."""
        borrowed = match == "served" and self.args.served_lr == "trainable" and self.run_name(match, method) != method
        control = takes_our_lr(method, self.methods)
        return len(self.grid) > 1 and not control and not borrowed and method not in self.given

    @property
    def total_runs(self) -> int:
        names = {self.run_name(match, m): (m, match) for match in self.matches for m in self.methods}
        grids = sum(len(self.grid) * self.args.grid_seeds for m, match in names.values() if self.tuned(m, match))
        return grids + len(names) * self.args.seeds
