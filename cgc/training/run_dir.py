"""The files of a run directory (a recipe's `output_dir`), named in this one place: what finetune.py writes and
evaluate.py, export.py, serve.py and compare.py read.

    config.yaml            the resolved config          cgc_run.json       the run's identity (run_identity.py)
    metrics.jsonl          one object per logged step   tensorboard/       the same, and the gates, for TensorBoard
    checkpoints/step_N/    DeepSpeed + sampler state    run_summary.json   world size, steps, loss, tokens/s, memory
    eval.json, eval.md     per-task scores              eval_predictions.jsonl   every prompt, target and answer
    gates.json             every task's gate weights    adapters/cgc/      the cgc adapter
    adapters/peft/<task>/  one PEFT LoRA per task       serving/base/      the base written for vLLM (serve.py)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cgc.adapter.config import CONFIG_NAME, CGCLoraConfig
from cgc.adapter.errors import CGCError, UnknownTaskError
from cgc.adapter.model import ADAPTER_WEIGHTS_NAME

IDENTITY_FILE = "cgc_run.json"
EVAL_JSON, EVAL_MD, EVAL_PREDICTIONS = "eval.json", "eval.md", "eval_predictions.jsonl"


class RunDirError(CGCError):
    """A run directory lacks what was asked of it (e.g. no adapter: the run has not finished)."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def identity(self) -> Path:
        return self.root / IDENTITY_FILE

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def summary(self) -> Path:
        return self.root / "run_summary.json"

    @property
    def eval_json(self) -> Path:
        return self.root / EVAL_JSON

    @property
    def eval_md(self) -> Path:
        return self.root / EVAL_MD

    @property
    def eval_predictions(self) -> Path:
        return self.root / EVAL_PREDICTIONS

    @property
    def gates(self) -> Path:
        return self.root / "gates.json"

    @property
    def adapters(self) -> Path:
        """adapters/: the cgc adapter and the PEFT exports."""
        return self.root / "adapters"

    @property
    def cgc_adapter(self) -> Path:
        return self.adapters / "cgc"

    @property
    def peft_adapters(self) -> Path:
        """adapters/peft: one directory per task."""
        return self.adapters / "peft"

    def peft_bytes(self) -> int:
        """Bytes of every task's exported adapter weights (what serving all of them keeps in memory)."""
        return sum(f.stat().st_size for f in self.peft_adapters.glob("*/adapter_model.safetensors"))

    @property
    def serving_base(self) -> Path:
        return self.root / "serving" / "base"

    @property
    def export(self) -> Path:
        """export.py's default output."""
        return self.root / "export"


def find_run_adapter(output_dir: str | Path, adapter: str | Path | None, tasks: str | None) -> tuple[Path, list[str]]:
    """The cgc adapter to evaluate, export or serve (`adapter`, else the run's `<output_dir>/adapters/cgc`) and the
    tasks asked for (comma-separated; None: all of the adapter's). Raises RunDirError / UnknownTaskError with the
    way out."""
    path = Path(adapter) if adapter else RunDir(output_dir).cgc_adapter
    if not (path / CONFIG_NAME).is_file():
        why = "not a cgc adapter directory" if adapter else "the run has not finished; train first, or pass --adapter"
        raise RunDirError(f"no cgc adapter at {path} ({CONFIG_NAME} missing): {why}")
    try:
        known = CGCLoraConfig.load(path).tasks
    except ValueError as err:  # not JSON, or not a config
        raise RunDirError(f"{path / CONFIG_NAME} is damaged: {err}") from None
    check_weights(path / ADAPTER_WEIGHTS_NAME)
    untrained = read_untrained(path)
    chosen = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else [t for t in known if t not in untrained]
    unknown = [t for t in chosen if t not in known]
    if unknown or not chosen:
        raise UnknownTaskError(f"--tasks: no task {unknown} in the adapter; its tasks: {', '.join(known)}")
    if asked_untrained := sorted(set(chosen) & set(untrained)):
        raise RunDirError(
            f"--tasks: {asked_untrained} had no training data in the run that saved {path} ({UNTRAINED_FILE}): "
            "an untrained adapter is never exported as if trained"
        )
    return path, chosen


UNTRAINED_FILE = "untrained_tasks.json"  # in a cgc adapter dir: tasks a run kept without data (allow_untrained)


def write_untrained(adapter: Path, tasks) -> None:
    path = Path(adapter) / UNTRAINED_FILE
    if tasks:
        path.write_text(json.dumps(sorted(tasks)) + "\n")
    else:
        path.unlink(missing_ok=True)


def read_untrained(adapter: Path) -> list[str]:
    path = Path(adapter) / UNTRAINED_FILE
    return json.loads(path.read_text()) if path.is_file() else []


def check_weights(path: Path) -> None:
    """A safetensors file that is whole: its header parses and covers the file (a truncated or zeroed file does
    not), else RunDirError naming it, before any model loads."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise RunDirError(f"{path} is missing: the adapter directory is incomplete")
    try:
        with safe_open(str(path), "pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as err:
        raise RunDirError(f"{path} is damaged ({err}); export or copy the adapter again") from None


def write_text_atomically(path: Path, text: str) -> None:
    """`path` holds the old text or the new, never a part: written beside it, then renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
