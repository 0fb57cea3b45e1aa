"""Peak host memory of loading a recipe's base model, per rank (each rank loads its own copy), printed as JSON.

    python benchmarks/load_memory.py                                   # SmolLM2-135M (GGUF): float and NF4
    python benchmarks/load_memory.py --model random-llama-1b --quantizations none

Each load runs in a fresh process; the figure is that process's peak RSS (`ru_maxrss`) after
`cgc.models.base_model.load_recipe_model`, and the same for a process that only imports what loading needs (the floor).
The GGUF -> NF4 path de-quantizes the GGUF file, writes a float checkpoint and loads it through bitsandbytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = """
import resource, sys, time
import torch, transformers
from cgc.models.base_model import load_recipe_model
start = time.time()
if sys.argv[2] != "floor":
    load_recipe_model(sys.argv[1], None, sys.argv[2], "float32")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.time() - start)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--quantizations", default="none,nf4")
    args = parser.parse_args()
    rows = {}
    for quantization in ["floor", *args.quantizations.split(",")]:
        out = subprocess.run([sys.executable, "-c", CHILD, args.model, quantization], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        peak, seconds = map(float, out.stdout.split()[-2:])
        rows[quantization] = {"peak_rss_mb": round(peak, 1), "load_s": round(seconds, 1)}
    print(
        json.dumps(
            {"benchmark": "load_memory", "model": args.model, "date": time.strftime("%Y-%m-%d"), **rows}, indent=2
        )
    )


if __name__ == "__main__":
    main()
