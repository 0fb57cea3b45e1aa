"""Recipe inputs checked before any process group or model exists (`load_run_inputs`): the config, the data, the
DeepSpeed JSON (valid, no likely key typo, a `zero_optimization` section DeepSpeed accepts, batch sizes filled
from the YAML), a step that some cluster can fill, a writable output_dir, the machine's support for the
combination, and warnings for data that would train silently wrong. Each problem is a `ConfigError` or a
`DataError` (exit 2 with one message in the recipes)."""

from __future__ import annotations

import difflib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets

from cgc.data.loading import load_task_examples, task_counts
from cgc.data.validation_split import count_shared
from cgc.evaluation.metrics import MetricSpec, task_metrics
from cgc.recipe.compatibility import MachineFacts, unsupported_combinations
from cgc.recipe.config import ConfigError, RecipeConfig, load_recipe_config
from cgc.recipe.growth import Growth, check_new_tasks_only, grown_config
from cgc.training.distributed import print0


@dataclass
class RunInputs:
    """Everything about a training run that can be checked before a process group or a model exists."""

    cfg: RecipeConfig
    train_raw: datasets.Dataset
    eval_raw: datasets.Dataset | None
    metrics: dict[str, MetricSpec]  # task -> its eval metric
    ds_config: dict
    zero3: bool
    trained_clusters: list[str]  # the clusters with training examples (the optimizer's)
    growth: Growth | None = None  # init_from: the trained adapter and the clusters this run adds
    untrained_tasks: tuple[str, ...] = ()  # tasks this run should train that have no examples (allow_untrained)


def load_run_inputs(config: str, overrides: list[str]) -> RunInputs:
    """Config, data and DeepSpeed JSON of a training run, validated (raises ConfigError / DataError)."""
    cfg, growth = load_recipe_config(config, overrides), None
    if cfg.init_from:
        cfg, growth = grown_config(cfg)  # cgc: the trained clusters, then the new ones (cgc.adapter.growth)
    d, task_map = cfg.data, cfg.cgc.task_map
    train_raw = load_task_examples(d.train_files, task_map, d.format, d.task_field)
    eval_raw = load_task_examples(d.eval_files, task_map, d.format, d.task_field) if d.eval_files else None
    if growth is not None:
        check_new_tasks_only(growth, task_counts(train_raw))
    if eval_raw is not None:
        check_eval_is_held_out(cfg, train_raw, eval_raw)
    metrics = task_metrics(cfg.cgc.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    check_writable(Path(cfg.output_dir))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_step_fits_a_cluster(cfg, task_counts(train_raw), world)
    ds_config = deepspeed_config(cfg, world)
    facts = MachineFacts.detect(need_ops="offload_optimizer" in ds_config["zero_optimization"])
    refused = unsupported_combinations(cfg.model.quantization, cfg.model.dtype, ds_config, facts)
    if refused:
        raise ConfigError("unsupported on this machine", refused)
    warn_empty_targets(train_raw)
    zero3 = ds_config["zero_optimization"].get("stage", 0) == 3
    counts = task_counts(train_raw)
    trained = [c for c in task_map.clusters if any(counts.get(t) for t in task_map.tasks_of(c))]
    if growth is not None and growth.extended_shared:  # their shared experts train on the appended tasks' data
        trained = [c for c in task_map.clusters if c in trained or c in growth.extended_shared]
    candidates = task_map.clusters if growth is None else growth.new_clusters
    untrained = check_every_task_has_data(cfg, counts, [t for c in candidates for t in task_map.tasks_of(c)])
    idle = [c for c in candidates if c not in trained]
    if idle:
        print0(f"warning: clusters {idle} have no training examples: their experts and gates stay as initialised "
               "(frozen, left out of the optimizer)", file=sys.stderr)  # fmt: skip
    return RunInputs(cfg, train_raw, eval_raw, metrics, ds_config, zero3, trained, growth, untrained)


def check_eval_is_held_out(cfg: RecipeConfig, train_raw, eval_raw) -> None:
    """Eval examples whose (task, input) the training data also holds score training data as held-out: refused
    (ConfigError) with the count per task, or with data.allow_eval_overlap a warning saying so."""
    trained = set(zip(train_raw["task"], train_raw["input"], strict=True))
    per_task = count_shared(zip(eval_raw["task"], eval_raw["input"], strict=True), trained)
    if not per_task:
        return
    what = f"{sum(per_task.values())} of {len(eval_raw)} eval examples have a training example's input ({per_task})"
    refuse_unless(
        cfg.data.allow_eval_overlap,
        f"data.eval_files: {what}: their scores would not be held-out scores. Remove them from the eval files, "
        "or set data.allow_eval_overlap: true to score them anyway",
        f"{what}; scored anyway (data.allow_eval_overlap)",
    )


def check_every_task_has_data(cfg: RecipeConfig, counts: dict[str, int], tasks: list[str]) -> tuple[str, ...]:
    """A task this run should train but has no example of would be exported untrained as if trained: refused
    (ConfigError), or with data.allow_untrained a warning. -> those tasks (their exports are skipped)."""
    untrained = tuple(t for t in tasks if not counts.get(t))
    if not untrained:
        return ()
    what = f"tasks {list(untrained)} of cgc.clusters have no examples in data.train_files"
    refuse_unless(
        cfg.data.allow_untrained,
        f"{what}: their experts would stay as initialised and be exported as if trained. Give them data, "
        "remove them from cgc.clusters, or set data.allow_untrained: true (they are then not exported)",
        f"{what}: they stay untrained and their PEFT adapters are not exported",
    )
    return untrained


def check_tokenized_tasks(inputs: RunInputs, examples: dict[str, int], dropped: dict[str, int]) -> tuple[str, ...]:
    """Tasks this run trains every example of which data.max_length dropped (their targets alone do not fit) would
    be exported untrained as if trained: refused (ConfigError), or with data.allow_untrained a warning. Replay of a
    task init_from trained is not such a task (its experts are trained). -> those tasks."""
    cfg, trained_before = inputs.cfg, inputs.growth.trained.task_map if inputs.growth else ()
    lost = tuple(sorted(t for t, n in examples.items() if n and dropped.get(t, 0) == n and t not in trained_before))
    if lost:
        what = f"data.max_length={cfg.data.max_length} drops every example of tasks {list(lost)} (their targets "
        what += "alone do not fit)"
        refuse_unless(
            cfg.data.allow_untrained,
            f"{what}: they would be exported untrained. Raise data.max_length, or set data.allow_untrained: true "
            "(they are then not exported)",
            f"{what}: they stay untrained and their PEFT adapters are not exported",
        )
    return lost


def refuse_unless(allowed: bool, refusal: str, warning: str) -> None:
    """The data checks' one rule: a ConfigError, or, where the config's switch allows it, a warning."""
    if not allowed:
        raise ConfigError(refusal)
    print0(f"warning: {warning}", file=sys.stderr)


def deepspeed_config(cfg: RecipeConfig, world: int) -> dict:
    """The static JSON of `deepspeed.config` with the batch fields filled from the YAML, and checked."""
    ds = read_deepspeed_json(Path(cfg.deepspeed.config))
    micro, accum = cfg.train.micro_batch_size, cfg.train.grad_accum
    wanted = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world,
    }
    clash = [f"{k}={ds[k]} (the YAML gives {v})" for k, v in wanted.items() if ds.get(k, "auto") not in ("auto", v)]
    if clash:
        raise ConfigError(
            f"{cfg.deepspeed.config} sets batch sizes that disagree with train_batch = micro x accumulation x world "
            f"= {micro} x {accum} x {world}: {', '.join(clash)}; remove them from the JSON, the recipe fills them"
        )
    ds.update(wanted)
    ds.setdefault("zero_optimization", {"stage": 0})
    ds.setdefault("gradient_clipping", cfg.train.max_grad_norm)
    ds.setdefault("steps_per_print", 10**9)  # the recipe logs; DeepSpeed's own step prints would duplicate it
    if cfg.model.dtype == "bfloat16":
        ds.setdefault("bf16", {"enabled": True})
    elif cfg.model.dtype == "float16":
        ds.setdefault("fp16", {"enabled": True})
    return ds


def single_rank_stage(ds_config: dict, world: int, resume_dir: Path | None, keep_partitioning: bool) -> str | None:
    """On one rank ZeRO stage 1/2 partitions nothing, yet its flat buffers, gradient hooks and copies cost a fifth
    of a CPU step (benchmarks/recipe_speed.py): set stage 0 in `ds_config` for a float32 run. The updates stay
    those of ZeRO: before its gradient all-reduce, DeepSpeed's engine gives every parameter without a gradient
    zeros (engine.py, `_get_gradients_for_reduction`), so Adam moves absent clusters by momentum as ZeRO's flat
    buffers do (tests/recipes/test_finetune.py compares the two). A resumed checkpoint keeps the stage it was saved
    with; a universal one needs ZeRO to load.
    -> the line to print when it changed the stage, else None."""
    zero = ds_config["zero_optimization"]
    stage = zero.get("stage", 0)
    half = any(ds_config.get(k, {}).get("enabled") for k in ("bf16", "fp16"))  # DeepSpeed's own optimizer wrappers
    if world != 1 or stage not in (1, 2) or half:
        return None
    if resume_dir is not None:
        from cgc.training import checkpoint as ckpt

        # the universal loader and a ZeRO checkpoint's optimizer shards need the ZeRO optimizer, a stage-0
        # checkpoint the plain one
        if ckpt.is_universal(resume_dir) or ckpt.saved_zero_stage(resume_dir) != 0:
            return None
    elif keep_partitioning:
        return None
    zero["stage"] = 0
    return (
        f"one rank: ZeRO stage {stage} would partition nothing, running stage 0 (the same updates, less bookkeeping; "
        "deepspeed.partition_single_rank=true keeps it)"
    )


# DeepSpeed's top-level keys (its config documentation). An unknown key close to one of these is a typo that
# DeepSpeed itself would ignore silently (e.g. `zero_optimisation`: the run would train without ZeRO).
DEEPSPEED_KEYS = (
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer", "scheduler",
    "fp16", "bf16", "amp", "gradient_clipping", "zero_optimization", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "activation_checkpointing", "wall_clock_breakdown", "steps_per_print",
    "tensorboard", "wandb", "csv_monitor", "flops_profiler", "comms_logger", "checkpoint", "data_types",
    "communication_data_type", "prescale_gradients", "gradient_predivide_factor", "sparse_gradients",
    "memory_breakdown", "dump_state", "aio", "autotuning", "compression_training", "data_efficiency",
    "elasticity", "pipeline", "dataloader_drop_last", "torch_autocast",
)  # fmt: skip


def read_deepspeed_json(path: Path) -> dict:
    """The DeepSpeed JSON, checked: valid JSON (file:line), no likely typo of a top-level key, and a
    `zero_optimization` section DeepSpeed's own model accepts (it forbids unknown keys)."""
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: malformed JSON: {err.msg}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    problems = []
    for key in ds:
        close = difflib.get_close_matches(key, DEEPSPEED_KEYS, n=1, cutoff=0.8)
        if key not in DEEPSPEED_KEYS and close:
            problems.append(f"unknown key {key!r} (did you mean {close[0]!r}? DeepSpeed would ignore it silently)")
    if isinstance(ds.get("zero_optimization"), dict):
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
        from pydantic import ValidationError

        try:
            DeepSpeedZeroConfig(**ds["zero_optimization"])
        except ValidationError as err:
            for e in err.errors():
                where = ".".join(str(p) for p in e["loc"])
                problems.append(f"zero_optimization.{where}: {e['msg']}")
    if problems:
        raise ConfigError(str(path), problems)
    return ds


def check_step_fits_a_cluster(cfg: RecipeConfig, counts: dict[str, int], world: int) -> None:
    """Every micro-step takes micro_batch_size examples of one cluster on every rank (all accumulation steps with
    cluster_per=optimizer_step): at least one cluster must hold that many examples."""
    unit_steps = cfg.train.grad_accum if cfg.sampler.cluster_per == "optimizer_step" else 1
    unit = cfg.train.micro_batch_size * world * unit_steps
    task_map = cfg.cgc.task_map
    sizes = {c: sum(counts.get(t, 0) for t in task_map.tasks_of(c)) for c in task_map.clusters}
    if max(sizes.values()) < unit:
        accum = f" x {unit_steps} accumulation steps" if unit_steps > 1 else ""
        raise ConfigError(
            f"train.micro_batch_size={cfg.train.micro_batch_size} x {world} ranks{accum} needs {unit} examples of one "
            f"cluster per step, more than any cluster has (training examples per cluster: {sizes}); lower "
            "train.micro_batch_size"
        )


def warn_empty_targets(train_raw) -> None:
    """An empty target trains the model to answer with EOS alone: say so, per task."""
    empty: dict[str, int] = {}
    for task, target in zip(train_raw["task"], train_raw["target"], strict=True):
        if not target.strip():
            empty[task] = empty.get(task, 0) + 1
    for task, n in sorted(empty.items()):
        print0(
            f"warning: {n} training examples of task {task!r} have an empty target (they teach it to answer nothing)",
            file=sys.stderr,
        )


def check_writable(out: Path) -> None:
    """output_dir can be created and written (by this rank: a probe file of its own), before anything loads."""
    probe = out / f".write_check_{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"output_dir {out} is not writable: {err.strerror or err}") from None
