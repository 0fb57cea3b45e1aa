"""The range and existence checks of a built RecipeConfig's values: every problem, as one line each."""

from __future__ import annotations

import math
from pathlib import Path

from cgc.data.sampler import argument_problems
from cgc.evaluation.metrics import task_metrics

QUANTIZATIONS = ("none", "nf4", "int8")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16", "float16")


def value_problems(c, root: Path, check_paths: bool) -> list[str]:
    """`c`: a RecipeConfig whose sections were all built."""
    problems = []

    def need(ok: bool, message: str):
        if not ok:
            problems.append(message)

    def exists(path: str, kind: str = "exists") -> bool:
        return not check_paths or getattr(root / path, kind)()

    need(
        c.model.quantization in QUANTIZATIONS,
        f"model.quantization must be one of {QUANTIZATIONS}, got {c.model.quantization!r}",
    )
    need(c.model.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {c.model.dtype!r}")
    need(bool(c.data.train_files), "data.train_files is empty: give at least one training file")
    for key in ("train_files", "eval_files"):
        for name in getattr(c.data, key):
            need(exists(name), f"data.{key}: file not found: {name}")
    need(c.data.max_length >= 2, f"data.max_length must be >= 2, got {c.data.max_length}")
    sections = {
        "micro_batch_size": "train",
        "grad_accum": "train",
        "mixing": "sampler",
        "temperature": "sampler",
        "cluster_per": "sampler",
    }
    arguments = {name: getattr(getattr(c, section), name) for name, section in sections.items()}
    for name, message in argument_problems(**arguments).items():
        problems.append(f"{sections[name]}.{name} {message}")
    t = c.train
    for key in ("max_steps", "log_every"):
        need(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    need(
        t.threads_per_rank is None or t.threads_per_rank >= 1,
        f"train.threads_per_rank must be >= 1 or null, got {t.threads_per_rank}",
    )
    need(0 <= c.seed < 2**32, f"seed must be in [0, 2**32), got {c.seed}")
    need(math.isfinite(t.lr) and t.lr > 0, f"train.lr must be a finite number > 0, got {t.lr}")
    need(math.isfinite(t.gate_lr) and t.gate_lr >= 0, f"train.gate_lr must be a finite number >= 0, got {t.gate_lr}")
    need(0 <= t.weight_decay < math.inf, f"train.weight_decay must be a finite number >= 0, got {t.weight_decay}")
    need(
        t.warmup_steps <= t.max_steps,
        f"train.warmup_steps={t.warmup_steps} is more than train.max_steps={t.max_steps}: the run would end still "
        "warming up, far below its lr; lower train.warmup_steps",
    )
    need(
        not t.extend_shared or bool(c.init_from),
        "train.extend_shared: true needs init_from (it trains the shared experts of a trained cluster)",
    )
    need(
        math.isfinite(t.collective_timeout_s) and t.collective_timeout_s > 0,
        f"train.collective_timeout_s must be a finite number of seconds > 0, got {t.collective_timeout_s}",
    )
    need(t.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}, got {t.schedule!r}")
    need(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    need(t.max_grad_norm >= 0, f"train.max_grad_norm must be >= 0 (0 turns clipping off), got {t.max_grad_norm}")
    need(t.save_every >= 0, f"train.save_every must be >= 0 (0: only at the end), got {t.save_every}")
    need(t.keep_last is None or t.keep_last >= 1, f"train.keep_last must be >= 1 or null, got {t.keep_last}")
    need(t.stop_after is None or t.stop_after >= 1, f"train.stop_after must be >= 1 or null, got {t.stop_after}")
    need(
        c.eval.max_examples_per_task >= 0,
        f"eval.max_examples_per_task must be >= 0, got {c.eval.max_examples_per_task}",
    )
    for key in ("max_new_tokens", "batch_size"):
        need(getattr(c.eval, key) >= 1, f"eval.{key} must be >= 1, got {getattr(c.eval, key)}")
    need(exists(c.deepspeed.config, "is_file"), f"deepspeed.config: file not found: {c.deepspeed.config}")
    need(
        c.resume in ("none", "latest") or exists(c.resume, "is_dir"),
        f"resume must be none, latest or a checkpoint directory, got {c.resume!r}",
    )
    if c.cgc is None:  # its problems are already listed
        return problems
    try:
        task_metrics(c.cgc.tasks, c.eval.default_metric, c.eval.metrics)
    except ValueError as err:
        problems.append(str(err))
    return problems
