"""Bytes of the frozen base held per rank under ZeRO-3, world size 1 and 2, with and without a 4-bit NF4 base,
printed as JSON. Each cell is one real run of recipes/finetune.py through the deepspeed launcher (2 optimizer
steps; `base_param_bytes_per_rank` and `peak_rss_mb` from its run_summary.json).

    python benchmarks/zero3_memory.py                                  # SmolLM2-135M-Instruct, on CPU ranks here
    python benchmarks/zero3_memory.py --model tiny-llama --worlds 1,2,4

Expected: per-rank bytes = total / world (ZeRO-3 shards the frozen base too), and NF4 about 1/4 of float32
storage for the quantized linear layers (embeddings and norms stay in the compute dtype).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cgc.training.distributed import free_port
from cgc.training.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")


def run_cell(model: str, world: int, quantization: str, out: Path) -> dict:
    command = [
        DEEPSPEED,
        "--num_gpus",
        str(world),
        "--master_port",
        str(free_port()),
        "recipes/finetune.py",
        "--config",
        "recipes/configs/smollm2_demo.yaml",
        f"output_dir={out}",
        f"model.name_or_path={model}",
        f"model.quantization={quantization}",
        "deepspeed.config=ds_configs/zero3.json",
        "train.max_steps=2",
        "train.warmup_steps=0",
        "train.micro_batch_size=2",
        "train.save_every=0",
        "eval.max_examples_per_task=0",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"run failed ({model}, world {world}, {quantization}):\n{(result.stdout + result.stderr)[-3000:]}")
    summary = json.loads(RunDir(out).summary.read_text())
    return {
        "world_size": world,
        "quantization": quantization,
        "base_param_bytes_total": summary["base_param_bytes_total"],
        "base_param_bytes_per_rank": summary["base_param_bytes_per_rank"],
        "per_rank_over_total": summary["base_param_bytes_per_rank"] / summary["base_param_bytes_total"],
        "peak_rss_mb_max_rank": summary["peak_rss_mb"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--quantizations", default="none,nf4")
    args = parser.parse_args()
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for quantization in args.quantizations.split(","):
            for world in map(int, args.worlds.split(",")):
                print(f"running world {world}, quantization {quantization} ...", file=sys.stderr, flush=True)
                cells.append(run_cell(args.model, world, quantization, Path(tmp) / f"{quantization}_{world}"))
    print(json.dumps({"benchmark": "zero3_memory", "model": args.model, "zero_stage": 3, "cells": cells}, indent=2))


if __name__ == "__main__":
    main()
