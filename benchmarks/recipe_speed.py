"""Training throughput of the DeepSpeed recipe against the simplest loop a user could write, printed as JSON.

    python benchmarks/recipe_speed.py                       # SmolLM2-135M-Instruct, demo data, 16 examples a step
    python benchmarks/recipe_speed.py --model tiny-llama --steps 6 --rounds 1      # a quick check (the test)

Three variants, same model, data, examples per optimizer step and steps:
  peft_loop      one process: PEFT LoRA of the same total rank as the cluster a CGC-LoRA step trains
                 ((S + K * tasks) * r on the same projections), forward with labels, backward, AdamW. No DeepSpeed.
                 The same batches as recipe_world1 (the cluster-aware sampler, length grouping as configured).
  recipe_world1  `python recipes/finetune.py` (world size 1, the config's DeepSpeed JSON)
  recipe_world2  the same recipe on 2 ranks through the deepspeed launcher, half the examples per rank
Every variant is a fresh process tree; the rounds alternate the variants so that machine noise hits all alike,
and the median over rounds is reported. tokens/s counts real (unpadded) tokens over the training steps only
(not loading, not checkpoint saves); padded tokens/s counts every position the model ran on. The recipe's
per-phase seconds (rank 0, summed over the steps) come from its run_summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("peft_loop", "recipe_world1", "recipe_world2")
OPTIONAL = ("recipe_world1_ungrouped",)  # recipe_world1 without length-grouped batches (sampler.group_by_length)
FILLER = "note: the words before the question do not change the answer".split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/smollm2_demo.yaml")
    parser.add_argument("--model", default=None, help="model.name_or_path override (default: the config's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="examples per optimizer step, over all ranks")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {VARIANTS + OPTIONAL}")
    parser.add_argument(
        "--long-tail",
        action="store_true",
        help="train on a variant of the config's data whose prompts get a long-tailed number of filler words "
        "in front (padding matters more)",
    )
    parser.add_argument("--peft-loop-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="further recipe overrides, key.sub=value")
    args = parser.parse_args()
    if args.batch % 2:
        parser.error("--batch must be even (recipe_world2 splits it over 2 ranks)")
    overrides = ([f"model.name_or_path={args.model}"] if args.model else []) + args.overrides
    if args.peft_loop_worker:
        print(json.dumps(peft_loop(args.config, overrides, args.steps, args.batch)))
        return
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS + OPTIONAL)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS + OPTIONAL}")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="recipe_speed_") as scratch:
        if args.long_tail:
            overrides.append(f"data.train_files=[{long_tailed_copy(args.config, overrides, Path(scratch))}]")
        for r in range(args.rounds):
            for variant in variants:
                result = run_variant(variant, args, overrides, Path(scratch) / f"{variant}_{r}")
                runs[variant].append(result)
                print(f"round {r + 1}/{args.rounds} {variant}: {result['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
    report = {
        "config": args.config,
        "overrides": overrides,
        "examples_per_step": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "cpu_cores": os.cpu_count(),
        "tokens_per_s": {v: median(runs[v], "tokens_per_s") for v in variants},
        "padded_tokens_per_s": {v: median(runs[v], "padded_tokens_per_s") for v in variants},
        "padding_fraction": {v: runs[v][0]["padding_fraction"] for v in variants},
        "phase_seconds": {v: runs[v][-1]["phase_seconds"] for v in variants if runs[v][-1].get("phase_seconds")},
        "runs": runs,
    }
    t = report["tokens_per_s"]
    if "peft_loop" in t and "recipe_world1" in t:
        report["recipe_world1_over_peft_loop"] = t["recipe_world1"] / t["peft_loop"]
    if "recipe_world1" in t and "recipe_world2" in t:
        report["recipe_world2_over_world1"] = t["recipe_world2"] / t["recipe_world1"]
    print(json.dumps(report, indent=2))


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def run_variant(variant: str, args, overrides: list[str], out: Path) -> dict:
    if variant == "peft_loop":
        cmd = [sys.executable, __file__, "--peft-loop-worker", "--config", args.config]
        cmd += ["--steps", str(args.steps), "--batch", str(args.batch), *overrides]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        check(done, variant)
        return json.loads(done.stdout.strip().splitlines()[-1])
    world = 2 if variant == "recipe_world2" else 1
    if variant == "recipe_world1_ungrouped":
        overrides = [*overrides, "sampler.group_by_length=false"]
    recipe = ["recipes/finetune.py", "--config", args.config, f"output_dir={out}", f"train.max_steps={args.steps}"]
    recipe += ["train.warmup_steps=0"]  # a few timed steps: the config's warmup would not fit (speed is lr-blind)
    recipe += [f"train.micro_batch_size={args.batch // world}", "train.grad_accum=1", "train.save_every=0"]
    recipe += ["eval.max_examples_per_task=0", *overrides]
    if world == 1:
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        done = subprocess.run([sys.executable, *recipe], cwd=ROOT, capture_output=True, text=True, env=env)
    else:
        from cgc.training.distributed import free_port

        launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2"]
        launcher += ["--master_port", str(free_port())]
        done = subprocess.run([*launcher, *recipe], cwd=ROOT, capture_output=True, text=True)
    check(done, variant)
    from cgc.training.run_dir import RunDir

    summary = json.loads(RunDir(out).summary.read_text())
    shutil.rmtree(out, ignore_errors=True)
    real, padding = summary["tokens_per_s"], summary.get("padding_fraction")  # absent before cgc reported it
    return {
        "tokens_per_s": real,
        "padded_tokens_per_s": None if padding is None else real / max(1.0 - padding, 1e-9),
        "padding_fraction": padding,
        "phase_seconds": summary.get("phase_seconds"),
    }


def long_tailed_copy(config_path: str, overrides: list[str], scratch: Path) -> Path:
    """The config's training examples, each prompt after 0-60 filler words drawn from a Pareto law (most get a
    few, some many), as real instruction data varies in length."""
    import numpy as np

    from cgc.recipe.config import load_recipe_config

    cfg = load_recipe_config(config_path, overrides)
    rng = np.random.default_rng(0)
    out = scratch / "long_tail.jsonl"
    with open(out, "w") as f:
        for name in cfg.data.train_files:
            for line in open(ROOT / name):
                row = json.loads(line)
                words = int(min(60, rng.pareto(1.2) * 4))
                row["input"] = " ".join((FILLER * 10)[:words] + [row["input"]])
                f.write(json.dumps(row) + "\n")
    return out


def check(done: subprocess.CompletedProcess, variant: str) -> None:
    if done.returncode != 0:
        sys.exit(f"{variant} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def peft_loop(config_path: str, overrides: list[str], steps: int, batch: int) -> dict:
    """The plain loop, on the recipe's own tokenised data and batches (the sampler at world size 1)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cgc.data import load_examples
    from cgc.data.sampler import ClusterAwareBatchSampler
    from cgc.data.tokenization import MultiTaskCollator, tokenize_dataset
    from cgc.models.base_model import load_base_model
    from cgc.recipe.config import load_recipe_config

    cfg = load_recipe_config(config_path, overrides)
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_base_model(cfg.model.name_or_path, cfg.model.gguf_file, getattr(torch, cfg.model.dtype))
    c = cfg.cgc
    largest = max(len(tasks) for tasks in c.clusters.values())
    rank = (c.num_shared_experts + c.num_task_experts * largest) * c.r  # what one CGC-LoRA step trains
    lora = LoraConfig(r=rank, lora_alpha=rank * c.alpha // c.r, lora_dropout=c.dropout, target_modules=c.target_modules)
    model = get_peft_model(base, lora).train()
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    raw = load_examples(cfg.data.train_files, cfg.data.format, cfg.data.task_field)
    data, _ = tokenize_dataset(raw, tokenizer, c.task_map, cfg.data.max_length, system_prompt=cfg.data.system_prompt)
    options = {"mixing": cfg.sampler.mixing, "temperature": cfg.sampler.temperature}
    if getattr(cfg.sampler, "group_by_length", False):  # (absent in versions before length grouping)
        options["lengths"] = [len(ids) for ids in data["input_ids"]]
    sampler = ClusterAwareBatchSampler(data["task_id"], c.task_map, batch, seed=cfg.seed, **options)
    collate = MultiTaskCollator(tokenizer.pad_token_id)  # right padding and full logits, as a user's loop has
    batches = iter(torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=collate))
    tokens = padded = seconds = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        b = next(batches)
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
        tokens += float(b["attention_mask"].sum())
        padded += float(b["attention_mask"].numel())
    return {
        "tokens_per_s": tokens / seconds,
        "padded_tokens_per_s": padded / seconds,
        "padding_fraction": 1.0 - tokens / padded,
        "lora_rank": rank,
    }


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
