"""Train-step speed of the CGC-LoRA layer, printed as JSON.

    python benchmarks/layer_speed.py [--hidden 256 --layers 4 --batch 8 --seq 64 --repeats 20]

Two comparisons, each timed alternately step by step in one process (machines are noisy; ratios of
interleaved medians are what we compare):

1. CGC-LoRA (S=2, K=1, r=8; the batch holds one cluster, two tasks mixed, as the cluster-aware sampler
   gives it) vs PEFT LoRA of rank (S+K)*r = 24 on the same frozen model. Target: ratio <= 1.10.
   Also reported: a batch of a single task (which runs only that task's S+K experts).
2. The batched expert product vs a per-expert Python loop (the MOELoRA paper's way: every expert runs on the
   whole batch and is weighted by a per-sample gate), both with 8 experts per task (S=8, K=0, r=8) and the
   same weights. Target: the loop is >= 2x slower.

A train step is forward + backward + AdamW step on the trainable parameters.
"""

from __future__ import annotations

import argparse
import copy
import json
import types

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

import cgc

from timing import ALL_PROJECTIONS, machine, make_step, randomize, time_alternately


def loop_over_experts(self: cgc.ClusterExperts, x, scales, single_task):
    """Reference forward: one Python iteration per expert, its weight applied per sample (x: (n, L, d_in); scales:
    (n, R_c), each expert's weight on each of its rank rows, from the model's gates)."""
    out = 0
    for k in range(self.num_experts):
        rows = self.expert_rows(k)
        expert = x @ self.lora_A[rows].T @ self.lora_B[:, rows].T  # (n, L, d_out)
        out = out + expert * scales[:, rows.start][:, None, None]
    return out


def base_model(args) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=args.hidden,
        intermediate_size=int(args.hidden * 2.75),
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 128),
    )
    return LlamaForCausalLM(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    base = base_model(args).to(args.device)
    ids = torch.randint(0, 2048, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    half = args.batch // 2

    # 1. CGC-LoRA vs PEFT LoRA of the same per-task rank.
    clusters = {"c0": ["t0", "t1"], "c1": ["t2", "t3"]}
    cgc_cfg = cgc.CGCLoraConfig(
        clusters=clusters, r=8, alpha=16, num_shared_experts=2, num_task_experts=1, target_modules=ALL_PROJECTIONS
    )
    cgc_model = cgc.attach(copy.deepcopy(base), cgc_cfg).train()
    cgc_params = [p for _, p in cgc_model.trainable_parameters()]
    randomize(cgc_params)
    cgc_inputs = {"input_ids": ids, "labels": ids, "task_ids": ["t0"] * half + ["t1"] * (args.batch - half)}
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=24, lora_alpha=48, target_modules=ALL_PROJECTIONS)
    ).train()
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]
    randomize(peft_params)
    single_inputs = {"input_ids": ids, "labels": ids, "task_ids": ["t0"] * args.batch}
    vs_peft = time_alternately(
        {
            "cgc": make_step(cgc_model, cgc_params, cgc_inputs),
            "cgc_single_task": make_step(cgc_model, cgc_params, single_inputs),
            "peft": make_step(peft_model, peft_params, {"input_ids": ids, "labels": ids}),
        },
        args.repeats,
        args.warmup,
    )
    del cgc_model, peft_model

    # 2. Batched product vs per-expert loop, 8 experts per task, identical weights and batch.
    moe_cfg = cgc.CGCLoraConfig(
        clusters=clusters, r=8, alpha=16, num_shared_experts=8, num_task_experts=0, target_modules=ALL_PROJECTIONS
    )
    batched = cgc.attach(copy.deepcopy(base), moe_cfg).train()
    randomize([p for _, p in batched.trainable_parameters()])
    looped = copy.deepcopy(batched)
    for layer in looped.adapted_layers().values():
        for experts in layer.experts.values():
            experts.forward = types.MethodType(loop_over_experts, experts)
    moe_inputs = {"input_ids": ids, "labels": ids, "task_ids": cgc_inputs["task_ids"]}
    with torch.no_grad():  # same function, two implementations
        diff = (batched(**moe_inputs).logits - looped(**moe_inputs).logits).abs().max().item()
    vs_loop = time_alternately(
        {
            "batched": make_step(batched, [p for _, p in batched.trainable_parameters()], moe_inputs),
            "loop": make_step(looped, [p for _, p in looped.trainable_parameters()], moe_inputs),
        },
        args.repeats,
        args.warmup,
    )

    result = {
        "benchmark": "layer_speed",
        **machine(args.device),
        "model": {"hidden": args.hidden, "layers": args.layers, "targets": ALL_PROJECTIONS},
        "batch": args.batch,
        "seq": args.seq,
        "repeats": args.repeats,
        "cgc_step_s": vs_peft["cgc"],
        "peft_rank24_step_s": vs_peft["peft"],
        "cgc_over_peft": vs_peft["cgc"] / vs_peft["peft"],
        "cgc_single_task_step_s": vs_peft["cgc_single_task"],
        "cgc_single_task_over_peft": vs_peft["cgc_single_task"] / vs_peft["peft"],
        "target_cgc_over_peft_max": 1.10,
        "batched_8_experts_step_s": vs_loop["batched"],
        "loop_8_experts_step_s": vs_loop["loop"],
        "loop_over_batched": vs_loop["loop"] / vs_loop["batched"],
        "target_loop_over_batched_min": 2.0,
        "batched_vs_loop_max_abs_logit_diff": diff,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
