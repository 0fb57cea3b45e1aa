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

from cgc.config import CGCLoraConfig
from cgc.metrics import task_metrics
from cgc.sampler import CLUSTER_PER, MIXINGS

QUANTIZATIONS = ("none", "nf4", "int8")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A bad recipe config; the message lists every problem found."""


@dataclass
class ModelSection:
    name_or_path: str = "tiny-llama"
    gguf_file: str | None = None
    quantization: str = "none"
    dtype: str = "float32"


@dataclass
class DataSection:
    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    format: str = "auto"
    task_field: str | None = None
    max_length: int = 256
    system_prompt: str | None = None


@dataclass
class SamplerSection:
    mixing: str = "temperature"
    temperature: float = 2.0
    cluster_per: str = "micro_step"


@dataclass
class TrainSection:
    max_steps: int = 100
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    gate_lr: float = 1e-2
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    save_every: int = 0
    log_every: int = 1
    stop_after: int | None = None  # end this invocation after N optimizer steps (checkpointed); schedule unchanged


@dataclass
class EvalSection:
    max_examples_per_task: int = 32  # 0 = no eval phase in finetune.py
    max_new_tokens: int = 32
    batch_size: int = 16
    default_metric: str | dict = "exact_match"  # a metric name, or {name: ..., <options>} (see cgc.metrics)
    metrics: dict = field(default_factory=dict)  # task -> metric, for tasks that do not use the default


@dataclass
class DeepSpeedSection:
    config: str = "ds_configs/zero2.json"


@dataclass
class RecipeConfig:
    output_dir: str
    cgc: dict
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    resume: str = "none"

    @property
    def cgc_config(self) -> CGCLoraConfig:
        return CGCLoraConfig(**self.cgc)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_recipe_config(
    path: str | os.PathLike, overrides: list[str] = (), root: str | os.PathLike = ".", check_paths: bool = True
) -> RecipeConfig:
    """Read the YAML at `path`, apply overrides, build and validate. Relative paths are relative to `root`;
    `check_paths=False` skips the checks that data, DeepSpeed and resume paths exist (configs for other machines).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    config = _build(RecipeConfig, raw, "", problems)
    if config is not None:
        problems += _check_values(config, Path(root), check_paths)
    if problems:
        raise ConfigError(f"invalid config {path}:\n  - " + "\n  - ".join(problems))
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
    """Dataclass `cls` from mapping `raw`, recording unknown keys and wrong types instead of raising."""
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
    values = {}
    for name, f in fields.items():
        key = f"{where}{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"missing key {key}")
            continue
        value, hint = raw[name], hints[name]
        if _accepts_float(hint) and isinstance(value, str):
            value = _float_or_str(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{key}.", problems) or hint()
        elif _fits(value, hint):
            values[name] = float(value) if hint is float else value
        else:
            problems.append(f"{key} must be {_describe(hint)}, got {value!r}")
    if any(p.startswith(f"missing key {where}") for p in problems):
        return None
    return cls(**values)


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


def _check_values(c: RecipeConfig, root: Path, check_paths: bool) -> list[str]:
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
    need(c.sampler.mixing in MIXINGS, f"sampler.mixing must be one of {MIXINGS}, got {c.sampler.mixing!r}")
    need(c.sampler.temperature > 0, f"sampler.temperature must be > 0, got {c.sampler.temperature}")
    need(
        c.sampler.cluster_per in CLUSTER_PER,
        f"sampler.cluster_per must be one of {CLUSTER_PER}, got {c.sampler.cluster_per!r}",
    )
    t = c.train
    for key in ("max_steps", "micro_batch_size", "grad_accum", "log_every"):
        need(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    need(t.lr > 0, f"train.lr must be > 0, got {t.lr}")
    need(t.gate_lr >= 0, f"train.gate_lr must be >= 0, got {t.gate_lr}")
    need(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    need(t.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}, got {t.schedule!r}")
    need(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    need(t.max_grad_norm >= 0, f"train.max_grad_norm must be >= 0 (0 turns clipping off), got {t.max_grad_norm}")
    need(t.save_every >= 0, f"train.save_every must be >= 0 (0: only at the end), got {t.save_every}")
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
    known = {f.name for f in dataclasses.fields(CGCLoraConfig)}
    unknown = sorted(set(c.cgc) - known)
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        problems.append(
            f"unknown key cgc.{key}"
            + (f" (did you mean cgc.{close[0]}?)" if close else f"; known keys: {sorted(known)}")
        )
    if "clusters" not in c.cgc:
        problems.append("missing key cgc.clusters")
    if unknown or "clusters" not in c.cgc:
        return problems
    try:
        tasks = CGCLoraConfig(**c.cgc).tasks
    except ValueError as err:
        return problems + [f"cgc: {line.strip(' -')}" for line in str(err).splitlines()[1:]]
    try:
        task_metrics(tasks, c.eval.default_metric, c.eval.metrics)
    except ValueError as err:
        problems.append(str(err))
    return problems
