"""Recipe configuration: YAML + `key.sub=value` overrides -> typed dataclasses, every problem in one error.

    recipes/finetune.py --config recipes/configs/tiny_cpu.yaml train.max_steps=8 data.train_files=[a.jsonl,b.jsonl]

Override values are parsed as YAML. Validation happens before any process group or model exists, so bad
input fails fast with one message that lists every problem.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.errors import AdapterConfigError
from cgc.recipe.errors import ConfigError
from cgc.recipe.value_checks import DTYPES, QUANTIZATIONS, SCHEDULES, value_problems  # noqa: F401 (names kept)
from cgc.recipe.yaml_file import read_yaml


def knob(default=dataclasses.MISSING, help: str = "", factory=dataclasses.MISSING):
    """A config field with its one-line documentation (`metadata["help"]`): the README's key table is made from
    these (cgc.recipe.key_table, `python -m cgc keys`), and a test keeps the two equal."""
    return field(default=default, default_factory=factory, metadata={"help": help})


@dataclass
class ModelSection:
    name_or_path: str = knob(
        "tiny-llama",
        "a local HF model dir; built in code: `tiny-llama`, `tiny-qwen2`, `random-llama-1b`; `smollm2-135m-instruct`",
    )
    gguf_file: str | None = knob(None, "a GGUF file inside `name_or_path`, de-quantized while loading")
    quantization: str = knob(
        "none", "`none`, `nf4` (4-bit, shardable by ZeRO-3) or `int8` of the frozen base (bitsandbytes)"
    )
    dtype: str = knob("float32", "`float32`, `bfloat16` or `float16`: the base and engine dtype")


@dataclass
class DataSection:
    train_files: list[str] = knob(help="training files (JSONL, JSON, parquet or a `save_to_disk` dir)", factory=list)
    eval_files: list[str] = knob(help="held-out files for the eval phase (may be empty)", factory=list)
    format: str = knob("auto", "`auto`, `generic`, `promptcblue`, `firefly` or `alpaca` (see Multi-task data)")
    task_field: str | None = knob(None, "alpaca: the column holding the task (else the file stem)")
    max_length: int = knob(256, "tokens per example; longer prompts are cut from the left, targets never")
    system_prompt: str | None = knob(None, "a system turn before every prompt (chat template), also at eval")
    allow_eval_overlap: bool = knob(
        False, "eval examples whose (task, input) is also in the training data: a warning with the count, not an error"
    )
    allow_untrained: bool = knob(
        False, "tasks of cgc.clusters without training examples: a warning, not an error (their adapters not exported)"
    )


@dataclass
class SamplerSection:
    mixing: str = knob(
        "temperature",
        "how often each task is drawn (∝ n, 1 or n^(1/T) of its n examples; a cluster is drawn with the sum of its "
        "tasks' shares, so the map does not change them): `proportional`, `uniform` or `temperature`",
    )
    temperature: float = knob(2.0, "T of p ∝ n^(1/T); higher T gives small tasks more steps")
    cluster_per: str = knob(
        "micro_step", "draw a cluster per `micro_step` or per `optimizer_step` (all accumulation steps)"
    )
    group_by_length: bool = knob(
        True, "batch examples of similar token length together (within a cluster): less padding computed"
    )


@dataclass
class TrainSection:
    max_steps: int = knob(100, "optimizer steps of the whole run (the schedule's length)")
    micro_batch_size: int = knob(4, "examples per rank per micro-step")
    grad_accum: int = knob(1, "micro-steps per optimizer step")
    lr: float = knob(2e-4, "peak learning rate of the experts (A, B)")
    gate_lr: float = knob(
        1e-2, "the gate logits' own learning rate, from the first step to the last (no warmup, decay or weight decay)"
    )
    weight_decay: float = knob(0.0, "AdamW weight decay of the experts")
    schedule: str = knob("cosine", "`cosine`, `linear` or `constant` (after warmup)")
    warmup_steps: int = knob(0, "linear warmup steps")
    max_grad_norm: float = knob(1.0, "gradient clipping (0: off)")
    collective_timeout_s: float = knob(
        1800.0,
        "a collective that waits longer ends the run with a message naming the rank that stopped answering; must "
        "exceed the slowest legitimate wait of the other ranks (a checkpoint save, a first compiled step, rank 0 "
        "tokenising or exporting alone)",
    )
    extend_shared: bool = knob(
        False,
        "with init_from: train the shared experts of each trained cluster the run appends tasks to (every task of "
        "that cluster changes; its old tasks' data may then be given as replay)",
    )
    gradient_checkpointing: bool = knob(
        False, "recompute activations in backward: less activation memory for one more forward pass"
    )
    compile: bool = knob(
        False,
        "torch.compile the base model with its CGC-LoRA layers for the training steps (routing stays eager); the "
        "first step of each cluster compiles its graph (tens of seconds on CPU); eval's generate stays eager",
    )
    save_every: int = knob(0, "checkpoint every N steps (0: only at the end, on preemption and on stop_after)")
    keep_last: int | None = knob(None, "keep the newest N complete checkpoints (null: all); never the resumed one")
    log_every: int = knob(10, "write metrics.jsonl / TensorBoard (losses, gates) every N steps; the last step always")
    threads_per_rank: int | None = knob(
        None,
        "CPU threads of each rank's torch/OpenMP; null: OMP_NUM_THREADS when set, else on CPU ranks the cores "
        "this process may use divided by the ranks on its node (several ranks each using every core slow down)",
    )
    stop_after: int | None = knob(
        None, "end this invocation after N optimizer steps (checkpointed); the schedule is unchanged"
    )


@dataclass
class EvalSection:
    max_examples_per_task: int = knob(32, "held-out examples scored per task after training (0: no eval phase)")
    max_new_tokens: int = knob(32, "greedy generation length")
    batch_size: int = knob(16, "prompts per generate call (mixed tasks)")
    default_metric: str | dict = knob(
        "exact_match", "a metric name, or `{name: ..., <options>}` (see cgc.evaluation.metrics)"
    )
    metrics: dict = knob(help="task -> metric, for tasks that do not use the default", factory=dict)


@dataclass
class DeepSpeedSection:
    config: str = knob(
        "ds_configs/zero2.json",
        "`ds_configs/zero2.json`, `zero3.json` or `zero3_offload.json`; the recipe fills the batch sizes",
    )
    partition_single_rank: bool = knob(
        False,
        "keep ZeRO stage 1/2 on a one-rank float32 run (by default it runs stage 0: same updates, no ZeRO "
        "bookkeeping); set it for checkpoints you will convert to universal ones",
    )


@dataclass
class RecipeConfig:
    output_dir: str = knob(help="where metrics, checkpoints, eval and adapters go")
    cgc: CGCLoraConfig = knob(help="the `CGCLoraConfig`: cluster map, expert rank and counts, target modules")
    seed: int = knob(0, "seeds the model's random init, the sampler's schedule and dropout")
    model: ModelSection = knob(help="the frozen base", factory=ModelSection)
    data: DataSection = knob(help="training and held-out data", factory=DataSection)
    sampler: SamplerSection = knob(help="the cluster-aware sampler", factory=SamplerSection)
    train: TrainSection = knob(help="optimisation", factory=TrainSection)
    eval: EvalSection = knob(help="the eval phase after training", factory=EvalSection)
    deepspeed: DeepSpeedSection = knob(help="the DeepSpeed JSON", factory=DeepSpeedSection)
    init_from: str | None = knob(
        None, "a trained run's `adapters/cgc`: train only the tasks `cgc.clusters` adds to it (README: Adding tasks)"
    )
    resume: str = knob("none", "`none`, `latest` (the newest complete checkpoint) or a `checkpoints/step_N` dir")
    overwrite: bool = knob(False, "with resume=none, move an output_dir holding another run aside instead of refusing")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def __getattr__(name: str):
    # The README's key table was made here before cgc.recipe.key_table (which imports this module) held it.
    if name in ("key_table", "key_table_markdown"):
        from cgc.recipe import key_table

        return getattr(key_table, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_recipe_config(
    path: str | os.PathLike, overrides: list[str] = (), root: str | os.PathLike = ".", check_paths: bool = True
) -> RecipeConfig:
    """Read the YAML at `path`, apply overrides, build and validate. Relative paths are relative to `root`;
    `check_paths=False` skips the checks that data, DeepSpeed and resume paths exist (configs for other machines).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    config = _build(RecipeConfig, raw, "", problems)
    if config is not None and None not in (config.model, config.data, config.train, config.eval, config.deepspeed):
        problems += value_problems(config, Path(root), check_paths)
    if problems:
        raise ConfigError(f"invalid config {path}", problems)
    return config


def _apply_override(raw: dict, item: str, problems: list[str]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        problems.append(f"override {item!r} is not of the form key.sub=value")
        return
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        problems.append(f"override {item!r}: the value is not valid YAML ({err.problem})")
        return
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            problems.append(f"override {item!r}: {part!r} is not a section")
            return
    node[leaf] = value


def _build(cls, raw, where: str, problems: list[str]):
    """Dataclass `cls` from mapping `raw`, recording unknown keys, wrong types and the problems `cls` itself finds
    (`AdapterConfigError.problems`, e.g. `CGCLoraConfig`'s) instead of raising. None when it cannot be built."""
    if not isinstance(raw, dict):
        problems.append(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {where}{close[0]}?)" if close else f"; known keys: {sorted(fields)}"
            problems.append(f"unknown key {where}{key}{hint}")
    values, missing = {}, False
    for name, f in fields.items():
        key = f"{where}{name}"
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in raw:
            if required:
                problems.append(f"missing key {key}")
                missing = True
            continue
        value, hint = raw[name], hints[name]
        if _accepts_float(hint) and isinstance(value, str):
            value = _float_or_str(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if dataclasses.is_dataclass(hint):
            # A section that could not be built stays None: its problems are recorded, and the other sections
            # are still checked so that one error lists everything.
            values[name] = _build(hint, value, f"{key}.", problems)
        elif _fits(value, hint):
            values[name] = float(value) if hint is float else value
        else:
            problems.append(f"{key} must be {_describe(hint)}, got {value!r}")
    if missing:
        return None
    try:
        return cls(**values)
    except AdapterConfigError as err:
        problems += [f"{where.rstrip('.')}: {p}" for p in err.problems]
        return None


def _accepts_float(hint) -> bool:
    return hint is float or float in typing.get_args(hint)


def _float_or_str(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _fits(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {type(None): "null", float: "a number", int: "an integer", str: "a string", bool: "true/false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
