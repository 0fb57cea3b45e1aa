"""Runs of recipes/finetune.py that another recipe starts (compare.py: one per method, lr and seed): the config
each run is given, kept when the run finished, resumed when it was interrupted, refused when it was made with
other settings (never silently reused or mixed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from cgc.adapter.config import CGCLoraConfig
from cgc.data.sampler import LAW as SAMPLER_LAW
from cgc.recipe.config import ConfigError, RecipeConfig, load_recipe_config
from cgc.training.distributed import free_port
from cgc.training.run_dir import RunDir

# Keys that change how a run is carried out, not what it computes: a re-run may change them (e.g. drop stop_after).
# what may differ between a finished run and the same run asked for again: how it ran, and checks that refuse or
# warn but never change what a run computes
HOW_IT_RUNS = {"train.stop_after", "train.save_every", "train.keep_last", "train.log_every", "train.threads_per_rank",
               "eval.batch_size", "resume", "overwrite", "data.allow_eval_overlap", "data.allow_untrained"}  # fmt: skip


def write_run_config(
    cfg: RecipeConfig, method: CGCLoraConfig, run_dir: Path, train_file, settings: dict, check_only: bool = False
) -> Path:
    """The base config with this method's `cgc` section, the split files (generic format), the run's seed, lr,
    steps and eval size (`settings`), its own output dir, and `resume: latest` so that a re-run continues it.
    Checked by loading it back before it is used; raises ConfigError when `run_dir` holds a run made with other
    settings or finished by another sampler version. `check_only`: that check alone, nothing kept."""
    raw = cfg.to_dict()
    raw["cgc"] = method.to_dict()
    raw["seed"] = settings["seed"]
    raw["data"].update(
        train_files=[str(train_file)], eval_files=[str(settings["eval_file"])], format="generic", task_field=None
    )
    scale = settings["max_steps"] / cfg.train.max_steps  # a shorter grid run keeps the schedule's shape
    raw["train"].update(
        lr=settings["lr"],
        gate_lr=settings["gate_lr"],
        max_steps=settings["max_steps"],
        warmup_steps=round(cfg.train.warmup_steps * scale),
        save_every=min(cfg.train.save_every, settings["max_steps"]),
        keep_last=1,  # only the newest checkpoint is ever resumed: dozens of runs must not fill the disk
    )
    raw["eval"]["max_examples_per_task"] = settings["eval_examples"]
    raw.update(output_dir=str(run_dir.resolve()), resume="latest")
    path = RunDir(run_dir).config  # finetune.py rewrites it resolved (defaults filled in): compare resolved
    if check_only and not path.is_file():
        return path  # no run there to differ from
    check_same_sampler(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = load_recipe_config(path, []).to_dict() if path.is_file() else None
    draft = run_dir / ".config.next.yaml"
    draft.write_text(yaml.safe_dump(raw, sort_keys=False))
    wanted = load_recipe_config(draft, []).to_dict()
    now, before = flat(wanted), flat(previous or {})
    refused = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k) and k not in HOW_IT_RUNS)
    if previous is not None and refused:
        draft.unlink()
        raise ConfigError(
            f"{run_dir} was made with other settings ({', '.join(refused)} differ): use another --out, or remove "
            "that run to redo it"
        )
    if check_only:
        draft.unlink()
        return path
    draft.replace(path)
    return path


def flat(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": "1"} (values as JSON, so that they compare exactly)."""
    items = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            items |= flat(value, f"{prefix}{key}.")
        else:
            items[prefix + key] = json.dumps(value)
    return items


def check_same_sampler(run_dir: Path) -> None:
    """A finished run whose batches another version of the sampler drew (run_summary.json's sampler_law) is
    refused: averaged or paired with this version's runs, it would mix two data laws. Raises ConfigError."""
    run = RunDir(run_dir)
    law = json.loads(run.summary.read_text()).get("sampler_law") if run.summary.is_file() else SAMPLER_LAW
    if law != SAMPLER_LAW:
        raise ConfigError(
            f"{run_dir} was trained by an earlier version of the sampler ({law or 'before the task law'}; now "
            f"{SAMPLER_LAW!r}): its examples per task follow another law. Use another --out, or remove that run"
        )


def is_done(run_dir: Path) -> bool:
    """The run finished (all its steps, eval and export)."""
    run = RunDir(run_dir)
    return run.eval_json.is_file() and run.summary.is_file() and json.loads(run.summary.read_text())["finished"]


def prune_finished(run_dir: Path, keep_adapters: bool) -> None:
    """Free what a finished child run no longer needs: its checkpoints (a finished run is kept, never resumed)
    and, for a run scored only for its number (an lr-grid run), its exported adapters. A seesaw of ~50 runs of
    a 135M model otherwise leaves ~70 GB behind (measured on the SmolLM2 demo, 2 seeds)."""
    run = RunDir(run_dir)
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    if not keep_adapters:
        shutil.rmtree(run.adapters, ignore_errors=True)


def run_to_end(command: list[str], cwd: Path) -> int:
    """Run a training child; on Ctrl-C (which reaches the child too) wait while it saves its checkpoint."""
    child = subprocess.Popen(command, cwd=cwd)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            print("\ninterrupted: waiting for the run to save a checkpoint ...", file=sys.stderr, flush=True)


def launcher(nproc: int) -> list[str]:
    """The command that starts a recipe on `nproc` local ranks (the deepspeed launcher beside this Python)."""
    if nproc <= 1:
        return [sys.executable]  # plain python: a run of world size 1
    deepspeed = Path(sys.executable).parent / "deepspeed"
    return [str(deepspeed), "--num_gpus", str(nproc), "--master_port", str(free_port())]
