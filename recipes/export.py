"""Export a trained cgc adapter for serving: one standard PEFT LoRA adapter per task, and optionally one merged
full model per task (ΔW_t folded into the base weights; no adapter code needed at serving time).

    python recipes/export.py --config recipes/configs/smollm2_demo.yaml        # -> <output_dir>/export/peft/<task>
    python recipes/export.py --config recipes/configs/smollm2_demo.yaml --merge --tasks add,uppercase
    python recipes/export.py --config ... --adapter outputs/x/adapters/cgc --out exported/

Each PEFT adapter has rank (S+K)·r and lora_alpha = rank: PEFT's `PeftModel.from_pretrained` / `load_adapter`
load it as it is, batches may mix tasks with `adapter_names`, and vLLM's LoRA serving takes the same directories
(`recipes/serve.py` starts vLLM with every task; tests/serving checks its tokens against cgc's). The export is
exact: the adapter reproduces the cgc model's outputs for its task.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

import cgc
from cgc.models import load_recipe_model
from cgc.recipe import error_exit, load_recipe_config
from cgc.training.run_dir import RunDir, find_run_adapter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--adapter", help="a cgc adapter dir (default: <output_dir>/adapters/cgc)")
    parser.add_argument("--out", help="export dir (default: <output_dir>/export)")
    parser.add_argument("--tasks", help="comma-separated tasks (default: all)")
    parser.add_argument("--merge", action="store_true", help="also write one merged full model per task")
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values)")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe_config(args.config, args.overrides, check_paths=False)  # no data is read here
        adapter, tasks = find_run_adapter(cfg.output_dir, args.adapter, args.tasks)
    except ValueError as err:  # cgc.CGCError included
        error_exit(str(err))
    out = Path(args.out) if args.out else RunDir(cfg.output_dir).export

    # The float base: merging into 4/8-bit packed weights would not be exact, and the PEFT export needs only the
    # adapter's tensors (those adapters load onto a quantized base as well as onto a float one).
    m = cfg.model
    base, tokenizer = load_recipe_model(m.name_or_path, m.gguf_file, "none", m.dtype, seed=cfg.seed)
    model = cgc.load_adapter(base, adapter)
    rank = model.cgc_config.exported_rank
    for task in tqdm(tasks, desc="export", unit="task"):
        cgc.export_peft_adapter(model, task, out / "peft" / task)
        if args.merge:
            merged = cgc.merge_task(model, task)
            merged.save_pretrained(out / "merged" / task)
            tokenizer.save_pretrained(out / "merged" / task)
            del merged
    manifest = {"base_model": m.name_or_path, "gguf_file": m.gguf_file, "lora_rank": rank, "tasks": tasks}
    out.mkdir(parents=True, exist_ok=True)
    (out / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    merged_note = f"; merged models: {out / 'merged'}" if args.merge else ""
    print(f"PEFT LoRA adapters (rank {rank}): {out / 'peft'}/<task>{merged_note}")
    print(f"every task on vLLM (one base model, a LoRA module per task): recipes/serve.py --config {args.config}")


if __name__ == "__main__":
    sys.exit(main())
