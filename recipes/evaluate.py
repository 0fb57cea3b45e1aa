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
from cgc.base_model import load_recipe_model
from cgc.config import CONFIG_NAME
from cgc.data import DataError, check_tasks, load_examples
from cgc.distributed import error_exit, local_device, print0, start_process_group
from cgc.evaluation import generate_answers, markdown_table, pick_examples, score_tasks, write_results
from cgc.metrics import task_metrics
from cgc.recipe_config import ConfigError, load_recipe_config


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
        adapter = Path(args.adapter or Path(cfg.output_dir) / "adapters" / "cgc")
        if args.adapter == "none":
            cgc_config = cfg.cgc
        elif (adapter / CONFIG_NAME).is_file():
            cgc_config = cgc.CGCLoraConfig.load(adapter)
        else:
            raise ConfigError(f"no cgc adapter at {adapter} ({CONFIG_NAME} missing): train first, or pass --adapter")
        if not cfg.data.eval_files or not cfg.eval.max_examples_per_task:
            raise ConfigError("nothing to evaluate: data.eval_files is empty or eval.max_examples_per_task is 0")
        examples_raw = load_examples(cfg.data.eval_files, cfg.data.format, cfg.data.task_field)
        check_tasks(examples_raw, cgc_config.task_map)
        metrics = task_metrics(cgc_config.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    except (ConfigError, DataError, ValueError) as err:
        error_exit(str(err))
    if "RANK" in os.environ:  # torchrun / deepspeed launcher: every rank answers its share of the examples
        start_process_group()

    # ---- model ------------------------------------------------------------------------------------------
    m = cfg.model
    base, tokenizer = load_recipe_model(m.name_or_path, m.gguf_file, m.quantization, m.dtype, seed=cfg.seed)
    if m.quantization == "none":  # bitsandbytes models are placed on this rank's GPU while loading
        base = base.to(local_device())
    if args.adapter == "none":
        model = cgc.attach(base, cgc_config)  # every LoRA B starts at zero: exactly the base model
        print0(f"evaluating the base model {m.name_or_path} alone")
    else:
        model = cgc.load_adapter(base, adapter)
        print0(f"evaluating {adapter} on {m.name_or_path}")

    # ---- generate, score, write -------------------------------------------------------------------------
    examples = pick_examples(examples_raw, cfg.eval.max_examples_per_task, cgc_config.tasks)
    e = cfg.eval
    answers = generate_answers(model, tokenizer, examples, e.batch_size, e.max_new_tokens, cfg.data.system_prompt)
    results = score_tasks(examples, answers, metrics, cgc_config.task_map)
    out = Path(args.out or cfg.output_dir)
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_results(out, results, examples, answers)
    print0(f"\n{markdown_table(results)}\nwritten: {out / 'eval.json'}, {out / 'eval.md'}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
