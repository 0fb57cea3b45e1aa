"""Per-task evaluation of a trained cgc adapter: batched greedy generation on mixed-task batches (one task id
per sample), each task scored with the metric the config gives it (`eval.default_metric`, `eval.metrics`).

    python recipes/evaluate.py --config recipes/configs/tiny_cpu.yaml                       # <output_dir>/adapters/cgc
    python recipes/evaluate.py --config recipes/configs/smollm2_demo.yaml --adapter outputs/x/adapters/cgc
    python recipes/evaluate.py --config recipes/configs/smollm2_demo.yaml --adapter none    # the base model alone
    torchrun --nproc_per_node 2 recipes/evaluate.py --config ...                            # examples split over ranks

Writes eval.json, eval.md (the Markdown table) and eval_predictions.jsonl to --out (default: the config's
output_dir), the same files the eval phase of finetune.py writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch.distributed as dist

import cgc
from cgc.data.loading import load_task_examples
from cgc.evaluation import evaluate_tasks, markdown_table, task_metrics, write_results
from cgc.models import load_recipe_model
from cgc.recipe import ConfigError, error_exit, load_recipe_config
from cgc.training.distributed import local_device, print0, start_process_group
from cgc.training.run_dir import EVAL_JSON, EVAL_MD, find_run_adapter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--adapter", help="a cgc adapter dir (default: <output_dir>/adapters/cgc), or `none`")
    parser.add_argument("--out", help="where eval.json, eval.md, eval_predictions.jsonl go (default: output_dir)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values)")
    args = parser.parse_args(argv)

    # ---- config, adapter and data: checked before the model loads ---------------------------------------
    try:
        cfg = load_recipe_config(args.config, args.overrides)
        if args.adapter == "none":
            adapter, cgc_config = None, cfg.cgc
        else:
            adapter, _ = find_run_adapter(cfg.output_dir, args.adapter, tasks=None)
            cgc_config = cgc.CGCLoraConfig.load(adapter)
        if not cfg.data.eval_files or not cfg.eval.max_examples_per_task:
            raise ConfigError("nothing to evaluate: data.eval_files is empty or eval.max_examples_per_task is 0")
        d = cfg.data
        examples_raw = load_task_examples(d.eval_files, cgc_config.task_map, d.format, d.task_field)
        metrics = task_metrics(cgc_config.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    except ValueError as err:  # cgc.CGCError, and task_metrics' ValueError
        error_exit(str(err))
    if "RANK" in os.environ:  # torchrun / deepspeed launcher: every rank answers its share of the examples
        start_process_group()

    # ---- model ------------------------------------------------------------------------------------------
    m = cfg.model
    base, tokenizer = load_recipe_model(m.name_or_path, m.gguf_file, m.quantization, m.dtype, seed=cfg.seed)
    if m.quantization == "none":  # bitsandbytes models are placed on this rank's GPU while loading
        base = base.to(local_device())
    if adapter is None:
        model = cgc.attach(base, cgc_config)  # every LoRA B starts at zero: exactly the base model
        print0(f"evaluating the base model {m.name_or_path} alone")
    else:
        model = cgc.load_adapter(base, adapter)
        print0(f"evaluating {adapter} on {m.name_or_path}")

    # ---- generate, score, write -------------------------------------------------------------------------
    e = cfg.eval
    results, examples, answers = evaluate_tasks(
        model, tokenizer, examples_raw, metrics, e.max_examples_per_task, e.batch_size, e.max_new_tokens,
        cfg.data.system_prompt,
    )  # fmt: skip
    out = Path(args.out or cfg.output_dir)
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_results(out, results, examples, answers)
    print0(f"\n{markdown_table(results)}\nwritten: {out / EVAL_JSON}, {out / EVAL_MD}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
