"""Time `recipes/finetune.py`'s own training steps (DeepSpeed engine, the recipe's loss, logging) at a given model,
batch and sequence length, for `gpu_step.py --recipe`: the recipe's tokens/s next to the bare train loop's.

The run trains the demo's CGC-LoRA shape (tiny_cpu.yaml's clusters, 3 x 3 tasks, S=2, K=1, r=8 on all 7
projections) on synthetic examples whose prompts are longer than `seq` tokens, so the recipe cuts every example to
exactly `seq` tokens: no padding, the bare loop's token count. Its steps' tokens/s come from metrics.jsonl
(`log_every` 1), the median over the steps after the warmup ones.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import string
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import DEMO_CLUSTERS

ROOT = Path(__file__).resolve().parent.parent


def synthetic_examples(path: Path, seq: int, per_task: int) -> None:
    """{task, input, target} lines: inputs of 2*seq random letters (cut to fit), 8-letter targets."""
    rng = random.Random(0)
    with open(path, "w") as f:
        for tasks in DEMO_CLUSTERS.values():
            for task in tasks:
                for _ in range(per_task):
                    text = "".join(rng.choices(string.ascii_lowercase, k=2 * seq))
                    target = "".join(rng.choices(string.ascii_lowercase, k=8))
                    f.write(json.dumps({"task": task, "input": text, "target": target}) + "\n")


def recipe_overrides(args, data: Path, out: Path, steps: int) -> list[str]:
    on_gpu = args.device != "cpu"
    return [
        f"output_dir={out}",
        f"model.name_or_path={args.model}",
        f"model.quantization={args.quantization}",
        f"model.dtype={args.dtype}",
        f"data.train_files=[{data}]",
        "data.eval_files=[]",
        f"data.max_length={args.seq}",
        "cgc.r=8",
        "cgc.alpha=16",
        "cgc.num_shared_experts=2",
        "cgc.num_task_experts=1",
        f"train.micro_batch_size={args.batch}",
        f"train.max_steps={steps}",
        "train.warmup_steps=0",  # a few timed steps: a warmup would not fit (speed is lr-blind)
        "train.log_every=1",
        "train.save_every=0",
        f"train.gradient_checkpointing={str(not args.no_checkpointing).lower()}",
        f"train.compile={str(args.compile).lower()}",
        "eval.max_examples_per_task=0",
        # on a GPU the recipe's ZeRO-3 (the bf16 engine); on CPU the smoke run's one-rank stage 0
        f"deepspeed.config=ds_configs/{'zero3' if on_gpu else 'zero2'}.json",
    ]


def time_recipe_steps(args) -> dict:
    """-> {tokens_per_s, step_s, padding_fraction, steps timed} of the recipe's steps after `args.warmup`."""
    steps = args.warmup + args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "train.jsonl", Path(tmp) / "run"
        synthetic_examples(data, args.seq, per_task=2 * args.batch)
        command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml"]
        command += recipe_overrides(args, data, out, steps)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"the recipe run failed:\n{result.stderr[-3000:]}")
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["step"] > args.warmup]
    tokens_per_s = statistics.median(r["tokens_per_s"] for r in timed)
    return {
        "tokens_per_s": tokens_per_s,
        "step_s": args.batch * args.seq / tokens_per_s,
        "padding_fraction": max(r["padding_fraction"] for r in timed),
        "steps_timed": len(timed),
    }
