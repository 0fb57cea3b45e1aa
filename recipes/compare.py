"""The seesaw report: shared LoRA, per-task LoRA, MOELoRA and CGC-LoRA trained and evaluated on the same data,
for the same steps, at a matched trainable-parameter budget (DESIGN §1; `cgc.presets.matched_budget`).

    python recipes/compare.py --config recipes/configs/tiny_cpu.yaml train.max_steps=8
    python recipes/compare.py --config recipes/configs/smollm2_demo.yaml --nproc 2   # each run on 2 ranks

Every method is one run of recipes/finetune.py (its own output dir, config.yaml and logs under --out, default
<output_dir>/compare). Run the same command again after an interruption: finished methods are skipped, an
interrupted one resumes from its last checkpoint. The budget is the total expert rank per adapted layer of the
config's CGC-LoRA setting unless --budget_rank says otherwise. Writes report.json, report.md and seesaw.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

import cgc
from cgc.base_model import load_recipe_model
from cgc.data import DataError, check_tasks, load_examples
from cgc.distributed import error_exit, free_port
from cgc.presets import matched_budget, total_rank
from cgc.recipe_config import ConfigError, load_recipe_config
from cgc.report import LABELS, build_report, write_report

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = ROOT / "recipes" / "finetune.py"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", help="report dir (default: <output_dir>/compare)")
    parser.add_argument("--methods", default=",".join(LABELS), help=f"comma-separated subset of {list(LABELS)}")
    parser.add_argument("--budget_rank", type=int, help="total expert rank per layer (default: the config's CGC)")
    parser.add_argument("--moe_experts", type=int, default=4, help="MOELoRA's number of experts (default 4)")
    parser.add_argument("--nproc", type=int, default=1, help="ranks per run (deepspeed launcher when > 1)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values), applied to every method")
    args = parser.parse_args(argv)

    # ---- config, data and the four method configs: checked before anything trains -----------------------
    try:
        cfg = load_recipe_config(args.config, args.overrides)
        base_cgc = cfg.cgc
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in LABELS]
        if unknown or not methods:
            raise ConfigError(f"--methods: unknown {unknown}; choose from {list(LABELS)}")
        if not cfg.data.eval_files or not cfg.eval.max_examples_per_task:
            raise ConfigError("the report needs held-out examples: data.eval_files and eval.max_examples_per_task")
        check_tasks(load_examples(cfg.data.eval_files, cfg.data.format, cfg.data.task_field), base_cgc.task_map)
        budget = args.budget_rank or total_rank(base_cgc)
        common = {"target_modules": base_cgc.target_modules, "dropout": base_cgc.dropout}
        presets = matched_budget(
            base_cgc.clusters,
            budget,
            num_shared=base_cgc.num_shared_experts,
            num_task=base_cgc.num_task_experts,
            moe_experts=args.moe_experts,
            **common,
        )
    except (ConfigError, DataError, ValueError) as err:
        error_exit(str(err))
    out = Path(args.out or Path(cfg.output_dir) / "compare")
    out.mkdir(parents=True, exist_ok=True)

    # ---- the budget each method got, before spending time on training -----------------------------------
    shapes = {m: method_shape(presets[m]) for m in methods}
    params = trainable_counts(cfg, {m: presets[m] for m in methods})
    print(f"matched budget: {budget} total expert rank per adapted layer")
    print(f"  {'method':<16}{'r':>5}{'experts':>9}{'total rank':>12}{'trainable params':>19}")
    for m in methods:
        s = shapes[m]
        print(f"  {LABELS[m]:<16}{s['r']:>5}{s['experts_per_layer']:>9}{s['total_rank']:>12}{params[m]:>19,}")

    # ---- train + evaluate each method: skipped when done, resumed when interrupted -----------------------
    runs = {}
    for i, m in enumerate(methods, 1):
        run_dir = out / m
        if is_done(run_dir):
            print(f"\n[{i}/{len(methods)}] {LABELS[m]}: done earlier, kept ({run_dir})")
        else:
            print(f"\n[{i}/{len(methods)}] {LABELS[m]}: training {cfg.train.max_steps} steps -> {run_dir}", flush=True)
            config_path = write_method_config(cfg, presets[m], run_dir)
            code = run_to_end(launcher(args.nproc) + [str(FINETUNE), "--config", str(config_path)])
            if code != 0 or not is_done(run_dir):
                why = f"failed (exit code {code})" if code else "stopped before the end (interrupted)"
                error_exit(
                    f"{LABELS[m]} {why}; its output is above and in {run_dir}. "
                    "Run the same command again to resume it.",
                    code=code or 1,
                )
        runs[m] = {
            "eval": json.loads((run_dir / "eval.json").read_text()),
            "summary": json.loads((run_dir / "run_summary.json").read_text()),
            "config": shapes[m],
        }

    # ---- the report -------------------------------------------------------------------------------------
    setup = {
        "command": " ".join(["python recipes/compare.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "model": cfg.model.name_or_path,
        "steps": cfg.train.max_steps,
        "budget_rank": budget,
        "examples_per_task": cfg.eval.max_examples_per_task,
        "seed": cfg.seed,
    }
    report = build_report(runs, setup)
    write_report(report, out)
    files = ", ".join(str(out / name) for name in ("report.md", "report.json", "seesaw.png"))
    print(f"\n{(out / 'report.md').read_text()}\nwritten: {files}")


def method_shape(config: cgc.CGCLoraConfig) -> dict:
    return {
        "r": config.r,
        "experts_per_layer": sum(config.num_experts(c) for c in config.clusters),
        "total_rank": total_rank(config),
        "clusters": len(config.clusters),
    }


def trainable_counts(cfg, configs: dict[str, cgc.CGCLoraConfig]) -> dict[str, int]:
    """Trainable parameters of each method, counted on the real base model (float: the counts do not depend on
    quantization). Attaching changes the model it is given, hence a copy per method."""
    m = cfg.model
    base, _ = load_recipe_model(m.name_or_path, m.gguf_file, "none", "float32", seed=cfg.seed)
    return {name: cgc.attach(copy.deepcopy(base), c).num_trainable_parameters() for name, c in configs.items()}


def is_done(run_dir: Path) -> bool:
    summary = run_dir / "run_summary.json"
    return (run_dir / "eval.json").is_file() and summary.is_file() and json.loads(summary.read_text())["finished"]


def write_method_config(cfg, method: cgc.CGCLoraConfig, run_dir: Path) -> Path:
    """The base config with this method's `cgc` section, its own output dir, and `resume: latest` so that a
    re-run continues an interrupted method."""
    raw = cfg.to_dict()
    raw["cgc"] = method.to_dict()
    raw.update(output_dir=str(run_dir.resolve()), resume="latest")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_to_end(command: list[str]) -> int:
    """Run a training child; on Ctrl-C (which reaches the child too) wait while it saves its checkpoint."""
    child = subprocess.Popen(command, cwd=ROOT)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            print("\ninterrupted: waiting for the run to save a checkpoint ...", file=sys.stderr, flush=True)


def launcher(nproc: int) -> list[str]:
    if nproc <= 1:
        return [sys.executable]  # plain python: a run of world size 1
    deepspeed = Path(sys.executable).parent / "deepspeed"  # the launcher installed beside this Python
    return [str(deepspeed), "--num_gpus", str(nproc), "--master_port", str(free_port())]


if __name__ == "__main__":
    sys.exit(main())
