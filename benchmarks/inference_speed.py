"""Generation speed when serving a cgc adapter, printed as JSON.

    python benchmarks/inference_speed.py                       # SmolLM2-135M-Instruct
    python benchmarks/inference_speed.py --model tiny --new_tokens 16

1. A merged per-task model (`cgc.merge_task`) vs the base model alone: the same architecture, so the ratio
   should be ~1 (merging removes the adapter's cost). The unmerged cgc model on the same single-task batch is
   reported beside them.
2. A batch that mixes all 9 tasks of the demo (3 clusters): `CGCModel.generate(task_ids=...)` vs PEFT with the
   9 exported per-task adapters loaded and `generate(adapter_names=...)`. Also reported: the fraction of
   generated sequences on which the two agree token for token (the export is exact, so it should be 1.0).

Greedy decoding of exactly --new_tokens tokens per sequence (min = max, so every contender does the same work),
on prompts from the demo eval data through the chat template; interleaved medians over --repeats.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch
from peft import PeftModel

import cgc
from cgc.data import load_examples
from cgc.data.tokenization import MultiTaskCollator, prompt_token_ids
from cgc.evaluation import pick_examples
from cgc.models.base_model import load_base_model
from cgc.models.tiny import char_tokenizer, tiny_model

from timing import ALL_PROJECTIONS, DEMO, DEMO_CLUSTERS, machine, randomize, time_alternately


def prompts(tokenizer, per_task: int, tasks: list[str], device) -> tuple[dict, list[str]]:
    """Left-padded prompts, `per_task` of each task, tasks interleaved -> (batch, task of each row)."""
    rows = pick_examples(load_examples(DEMO / "eval.jsonl"), per_task, tasks)
    features = [{"input_ids": prompt_token_ids(tokenizer, ex["input"]), "task_id": 0} for ex in rows]
    batch = MultiTaskCollator(tokenizer.pad_token_id, padding_side="left")(features)
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}, [ex["task"] for ex in rows]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny, or a local/hub model path")
    parser.add_argument("--per_task", type=int, default=2, help="prompts per task in the batch (9 tasks)")
    parser.add_argument("--new_tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    if args.model == "tiny":
        base, tokenizer = tiny_model("tiny-llama", hidden_size=256, num_layers=4), char_tokenizer()
    else:
        base, tokenizer = load_base_model("smollm2-135m-instruct" if args.model == "smollm2" else args.model)
    base = base.to(args.device).eval()
    plain = copy.deepcopy(base)  # attach adapts the model it is given in place
    config = cgc.CGCLoraConfig(
        clusters=DEMO_CLUSTERS, r=8, alpha=16, num_shared_experts=2, num_task_experts=1, target_modules=ALL_PROJECTIONS
    )
    model = cgc.attach(copy.deepcopy(base), config).eval()
    randomize([p for _, p in model.trainable_parameters()], std=0.05)
    merged = cgc.merge_task(model, "add").eval()
    with tempfile.TemporaryDirectory() as tmp:
        for task in config.tasks:
            cgc.export_peft_adapter(model, task, Path(tmp) / task)
        served = PeftModel.from_pretrained(
            copy.deepcopy(plain), Path(tmp) / config.tasks[0], adapter_name=config.tasks[0]
        )
        for task in config.tasks[1:]:
            served.load_adapter(Path(tmp) / task, adapter_name=task)
    served.eval()

    batch, tasks = prompts(tokenizer, args.per_task, config.tasks, args.device)
    greedy = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    greedy["pad_token_id"] = tokenizer.pad_token_id
    outputs = {}

    def generate(name, fn):
        def call():
            with torch.no_grad():
                outputs[name] = fn()

        return call

    single = ["add"] * len(tasks)
    times = time_alternately(
        {
            "base": generate("base", lambda: plain.generate(**batch, **greedy)),
            "merged_add": generate("merged_add", lambda: merged.generate(**batch, **greedy)),
            "cgc_add": generate("cgc_add", lambda: model.generate(**batch, task_ids=single, **greedy)),
            "cgc_mixed": generate("cgc_mixed", lambda: model.generate(**batch, task_ids=tasks, **greedy)),
            "peft_mixed": generate("peft_mixed", lambda: served.generate(**batch, adapter_names=tasks, **greedy)),
        },
        repeats=args.repeats,
        warmup=1,
    )
    agree = (outputs["cgc_mixed"] == outputs["peft_mixed"]).all(dim=1).float().mean().item()
    merged_agree = (outputs["cgc_add"] == outputs["merged_add"]).all(dim=1).float().mean().item()
    new_tokens = len(tasks) * args.new_tokens
    report = {
        "benchmark": "inference_speed",
        **machine(args.device),
        "model": args.model,
        "batch": len(tasks),
        "new_tokens_per_sequence": args.new_tokens,
        "generate_s": times,
        "new_tokens_per_s": {k: new_tokens / t for k, t in times.items()},
        "merged_over_base": times["merged_add"] / times["base"],
        "cgc_single_task_over_base": times["cgc_add"] / times["base"],
        "cgc_mixed_over_peft_mixed": times["cgc_mixed"] / times["peft_mixed"],
        "cgc_vs_peft_mixed_sequences_identical": agree,
        "cgc_vs_merged_sequences_identical": merged_agree,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
