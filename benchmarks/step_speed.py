"""Full train-step time and peak memory of CGC-LoRA vs PEFT LoRA on real model shapes, printed as JSON.

    python benchmarks/step_speed.py                                  # SmolLM2-135M-Instruct and a tiny Llama
    python benchmarks/step_speed.py --models tiny --batch 8 --seq 64
    python benchmarks/step_speed.py --models meta-llama/Llama-3.2-1B --dtype bfloat16   # on a GPU (tokens/s, MFU)
    python benchmarks/step_speed.py --models tiny --compile          # both under torch.compile (CGCModel.compile)

CGC-LoRA: the demo's shape (3 clusters x 3 tasks, S=2, K=1, r=8 on all 7 projections); the batch holds one
cluster with its three tasks mixed, as the cluster-aware sampler gives it. Against PEFT LoRA on the same frozen
model at two ranks: (S+K)*r = 24, the rank each task sees (the speed target: ratio <= 1.10), and
(S+K*3)*r = 40, the total rank of the cluster the step touches (equal total rank). A step is forward + backward
+ AdamW. Times are interleaved medians in one process. Peak memory: on a GPU, the peak allocated during the
steps above what the model held before; on CPU each variant runs in a fresh process and reports its peak RSS
above its RSS before the first step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from cgc.models.base_model import load_base_model
from cgc.models.tiny import tiny_model

from timing import demo_cgc, machine, make_step, peft_lora, randomize, time_alternately

MODELS = {"tiny": "tiny-llama (hidden 256, 4 layers)", "smollm2": "smollm2-135m-instruct"}
VARIANTS = ("cgc", "peft_r24", "peft_r40")


def build(model_name: str, variant: str, args):
    """-> (model, trainable params, inputs) for one variant, with non-zero adapter weights."""
    dtype = getattr(torch, args.dtype)
    if model_name == "tiny":
        base = tiny_model("tiny-llama", hidden_size=256, num_layers=4)
    else:
        base, _ = load_base_model(MODELS.get(model_name, model_name), dtype=dtype)
    base = base.to(args.device, dtype)
    vocab = base.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    if variant == "cgc":
        model, params, inputs = demo_cgc(base, ids)
    else:
        model, params, inputs = peft_lora(base, ids, int(variant.removeprefix("peft_r")))
    randomize(params)
    if args.compile and variant == "cgc":
        model.compile()  # the base with its CGC-LoRA layers; routing stays eager
    elif args.compile:
        model = torch.compile(model)
    return model, params, inputs


def peak_memory_mb(model_name: str, variant: str, args) -> float:
    """Peak memory of a few train steps above what the model held before them."""
    if args.device != "cpu":
        model, params, inputs = build(model_name, variant, args)
        step = make_step(model, params, inputs)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    command = [sys.executable, __file__, "--_memory_of", model_name, variant, *forwarded(args)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)["peak_mb"]


def forwarded(args) -> list[str]:
    flags = ["--batch", str(args.batch), "--seq", str(args.seq), "--dtype", args.dtype, "--device", args.device]
    return flags + (["--compile"] if args.compile else [])


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2", help="tiny, smollm2, or a local/hub model path")
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant (warmup compiles)")
    parser.add_argument("--_memory_of", nargs=2, help=argparse.SUPPRESS)  # internal: one variant's CPU memory
    args = parser.parse_args()

    if args._memory_of:  # a fresh process: RSS before the first step, then the peak over three steps
        model, params, inputs = build(*args._memory_of, args)
        step = make_step(model, params, inputs)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak RSS) to the current RSS: loading the model does not count
        before = rss_mb()
        for _ in range(3):
            step()
        print(json.dumps({"peak_mb": peak_rss_mb() - before}))
        return

    results = []
    for model_name in [m.strip() for m in args.models.split(",") if m.strip()]:
        built = {v: build(model_name, v, args) for v in VARIANTS}
        times = time_alternately({v: make_step(*built[v]) for v in VARIANTS}, repeats=args.repeats, warmup=args.warmup)
        row = {
            "model": MODELS.get(model_name, model_name),
            "trainable_params": {v: sum(p.numel() for p in built[v][1]) for v in VARIANTS},
        }
        del built
        tokens = args.batch * args.seq
        row["step_s"] = times
        row["tokens_per_s"] = {v: tokens / t for v, t in times.items()}
        row["cgc_over_peft_r24"] = times["cgc"] / times["peft_r24"]
        row["cgc_over_peft_r40"] = times["cgc"] / times["peft_r40"]
        row["peak_memory_mb"] = {v: peak_memory_mb(model_name, v, args) for v in VARIANTS}
        results.append(row)
    report = {
        "benchmark": "step_speed",
        **machine(args.device),
        "batch": args.batch,
        "seq": args.seq,
        "dtype": args.dtype,
        "repeats": args.repeats,
        "compile": args.compile,
        "target_cgc_over_peft_r24_max": 1.10,
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
