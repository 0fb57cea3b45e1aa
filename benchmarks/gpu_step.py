"""A CGC-LoRA train step against PEFT LoRA of equal total rank on a ~1B model: tokens/s, peak GPU memory and MFU,
printed as JSON.

    python benchmarks/gpu_step.py                                   # random-llama-1b, NF4 base, bf16, on the GPU
    python benchmarks/gpu_step.py --quantization none --seq 1024
    python benchmarks/gpu_step.py --preset 16x1024 --no_checkpointing --compile
    python benchmarks/gpu_step.py --preset 32x2048 --recipe         # + recipes/finetune.py's own steps (ZeRO-3)
    python benchmarks/gpu_step.py --model tiny-llama --device cpu   # a smoke run of the script itself (no MFU)

The model is `random-llama-1b` (Llama-3.2-1B's layer shapes, randomly initialised from a config: nothing is
downloaded). CGC-LoRA: the demo's shape (3 clusters x 3 tasks, S=2, K=1, r=8 on all 7 projections), the batch one
cluster with its three tasks mixed, as the cluster-aware sampler gives it; its layers then compute the cluster's
total rank (S + K*3)*r = 40, so PEFT LoRA runs at r=40 (equal total rank). Both with non-reentrant gradient
checkpointing (unless --no_checkpointing), AdamW on the adapter, timed alternately in one process. `--compile`:
both under torch.compile (CGC-LoRA: `CGCModel.compile`, routing eager). `--recipe`: also the recipe's steps at the
same model, batch and length (benchmarks/recipe_steps.py), and their tokens/s over the bare CGC-LoRA loop's.

MFU = tokens/s x FLOPs per token / the GPU's dense bf16 peak. FLOPs per token: 2N forward + 2N backward to the
inputs + 2N recompute (checkpointing) for the N frozen weights of the linear layers (frozen: no weight gradient),
plus 8 per adapter weight (forward, recompute, input and weight gradients); without checkpointing 4N and 6 per
adapter weight. Attention's score products are left
out (small at these lengths), so MFU is slightly understated.
"""

from __future__ import annotations

import argparse
import json

import torch
from recipe_steps import time_recipe_steps

from cgc.models.base_model import load_recipe_model

from timing import demo_cgc, machine, make_step, peft_lora, randomize, time_alternately

# Dense bf16 peak of the GPUs this is likely to meet, TFLOP/s (vendor data sheets, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "A100": 312.0}
CLUSTER_RANK = 40  # (S + K * 3) * r of the demo's shape
PRESETS = {"8x512": (8, 512), "16x1024": (16, 1024), "32x2048": (32, 2048)}  # batch x tokens per sequence


def build(variant: str, args):
    """-> (model, trainable params, inputs, frozen linear weights N, adapter weights the step computes with)."""
    base, _ = load_recipe_model(args.model, None, args.quantization, args.dtype)
    if args.quantization == "none":
        base = base.to(args.device)
    base.config.use_cache = False
    frozen = sum(m.in_features * m.out_features for m in base.modules() if isinstance(m, torch.nn.Linear))
    ids = torch.randint(4, 104, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    if variant == "cgc":
        model, params, inputs = demo_cgc(base, ids)
        # one cluster's experts run per step: its A and B (gate logits are negligible)
        active = sum(p.numel() for n, p in model.trainable_parameters() if ".words." in n and "lora_" in n)
    else:
        model, params, inputs = peft_lora(base, ids, CLUSTER_RANK)
        active = sum(p.numel() for p in params)
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    randomize(params)
    if args.compile and variant == "cgc":
        model.compile()
    elif args.compile:
        model = torch.compile(model)
    return model, params, inputs, frozen, active


def peak_tflops(args) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device == "cpu":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-llama-1b")
    parser.add_argument("--quantization", default="nf4", choices=["none", "nf4"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--preset", choices=list(PRESETS), default="8x512", help="batch x sequence length")
    parser.add_argument("--batch", type=int, help="instead of the preset's")
    parser.add_argument("--seq", type=int, help="instead of the preset's")
    parser.add_argument("--no_checkpointing", action="store_true", help="keep activations (more memory, no recompute)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both (warmup steps compile)")
    parser.add_argument("--recipe", action="store_true", help="also time recipes/finetune.py's steps")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    args = parser.parse_args()
    preset_batch, preset_seq = PRESETS[args.preset]
    args.batch, args.seq = args.batch or preset_batch, args.seq or preset_seq
    if args.device == "cpu" and args.quantization != "none":
        parser.error("--device cpu is a smoke run: use --quantization none (bitsandbytes NF4 training wants a GPU)")

    built = {v: build(v, args) for v in ("cgc", "peft_r40")}
    times = time_alternately(
        {v: make_step(m, p, i) for v, (m, p, i, _, _) in built.items()}, repeats=args.repeats, warmup=args.warmup
    )
    tokens = args.batch * args.seq
    peak = peak_tflops(args)
    rows = {}
    for variant, (model, params, inputs, frozen, active) in built.items():
        step = make_step(model, params, inputs)
        memory = None
        if args.device != "cpu":  # the step's peak above what is resident (both models, their optimizer states)
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            memory = (torch.cuda.max_memory_allocated() - before) / 2**20
        flops_per_token = (4 if args.no_checkpointing else 6) * frozen + (6 if args.no_checkpointing else 8) * active
        tokens_per_s = tokens / times[variant]
        rows[variant] = {
            "step_s": times[variant],
            "tokens_per_s": tokens_per_s,
            "peak_memory_mb": memory,
            "trainable_params": sum(p.numel() for p in params),
            "flops_per_token": flops_per_token,
            "mfu": None if peak is None else tokens_per_s * flops_per_token / (peak * 1e12),
        }
    report = {
        "benchmark": "gpu_step",
        **machine(args.device),
        "model": args.model,
        "frozen_linear_params": built["cgc"][3],
        "quantization": args.quantization,
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "checkpointing": not args.no_checkpointing,
        "compile": args.compile,
        "peak_bf16_tflops": peak,
        "results": rows,
        "cgc_over_peft_step_time": times["cgc"] / times["peft_r40"],
    }
    if args.recipe:
        del built, rows  # the recipe loads its own model in its own process
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        recipe = time_recipe_steps(args)
        cgc_tokens_per_s = report["results"]["cgc"]["tokens_per_s"]
        report["recipe"] = {**recipe, "over_bare_loop": recipe["tokens_per_s"] / cgc_tokens_per_s}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
