"""The seesaw report: shared LoRA, per-task LoRA, MOELoRA and CGC-LoRA trained and evaluated on the same data,
for the same steps, at a matched trainable-parameter budget (`cgc.presets.matched_budget`: the same total expert
rank per adapted layer), each at the learning rate its own validation grid picked, over several seeds.

    make seesaw   # the demo's instruction variant, 3 seeds, the default grid (the command is in the Makefile)
    python recipes/compare.py --config recipes/configs/tiny_cpu.yaml --seeds 2 --lr_grid 1e-3,3e-3 train.max_steps=8

1. Data: a validation split is carved from the training files (per task, seeded; disjoint from training and
   from the eval files by example) unless --validation_files gives one. Written under <out>/data/.
2. Learning rate: per method, a short run (--grid_steps) for each lr of --lr_grid, scored on the validation
   split; the best mean score picks the method's lr. The gates' lr keeps the config's gate_lr / lr ratio unless
   --gate_lr fixes it. The eval files are never looked at here.
3. Final runs: per method and seed (config seed, +1, ...), train.max_steps steps at the chosen lr, scored on
   the eval files (--eval_examples per task where the data has them).
4. Report: mean ± std over seeds, deltas vs per-task LoRA, a paired bootstrap 95 % interval of CGC-LoRA − the
   best other method over eval examples × seeds, the gates' own-vs-shared split: report.json, report.md,
   seesaw.png, gates.png.

Every run is one run of recipes/finetune.py under --out (default <output_dir>/compare): grid/<method>/lr_<lr>/
and <method>/seed_<seed>/. Run the same command again after an interruption: finished runs are kept, an
interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from dataclasses import dataclass
from itertools import count
from pathlib import Path

import numpy as np

import cgc
from cgc.adapter.presets import matched_budget, method_shape, smallest_budget, total_rank
from cgc.analysis import gate_report
from cgc.analysis import report as seesaw
from cgc.analysis.report import LABELS, OURS
from cgc.analysis.stats import paired_bootstrap
from cgc.data import DataError, load_task_examples
from cgc.data.validation_split import carve_validation, check_disjoint, write_jsonl
from cgc.evaluation import task_metrics
from cgc.models import load_recipe_model
from cgc.recipe import ConfigError, RecipeConfig, error_exit, load_recipe_config
from cgc.recipe.child_runs import is_done, launcher, run_to_end, write_run_config
from cgc.training.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = ROOT / "recipes" / "finetune.py"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = make_plan(args)  # config, data split and the method configs: checked before anything trains
    print_budget(plan)
    chosen = tune_learning_rates(plan)  # 1. the lr of each method, from its validation score
    finals = final_runs(plan, chosen)  # 2. every method at its lr, every seed, scored on the eval files
    report = seesaw_report(plan, chosen, finals, sys.argv[1:] if argv is None else argv)  # 3. the report
    seesaw.write_report(report, plan.out)
    written = ["report.md", "report.json", "seesaw.png"] + (["gates.png"] if "gates" in report else [])
    print(f"\n{(plan.out / 'report.md').read_text()}\nwritten: {', '.join(str(plan.out / n) for n in written)}")


# ==== the phases, in the order main() runs them ================================================================


@dataclass
class Plan:
    """What the comparison runs, decided and checked before any training."""

    args: argparse.Namespace
    cfg: RecipeConfig
    methods: list[str]
    grid: list[float]  # the learning rates tried per method (one: no grid)
    presets: dict[str, cgc.CGCLoraConfig]  # method -> its configuration at the matched budget
    budget: int  # total expert rank per adapted layer
    asked: int  # the budget asked for (raised to `budget` when too small for min_rank)
    rows: dict[str, list[dict]]  # "train", "validation", "eval" -> examples
    files: dict[str, Path]  # the same, written under <out>/data
    out: Path
    runs: count  # numbers the runs as they start

    @property
    def gate_ratio(self) -> float:
        return self.cfg.train.gate_lr / self.cfg.train.lr

    @property
    def grid_steps(self) -> int:
        return self.args.grid_steps or max(1, self.cfg.train.max_steps // 2)

    @property
    def total_runs(self) -> int:
        return len(self.methods) * ((len(self.grid) if len(self.grid) > 1 else 0) + self.args.seeds)


def make_plan(args) -> Plan:
    """Config, data (the validation split carved or read) and each method's config; bad input exits 2."""
    try:
        cfg = load_recipe_config(args.config, args.overrides)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in LABELS]
        if unknown or not methods:
            raise ConfigError(f"--methods: unknown {unknown}; choose from {list(LABELS)}")
        grid = parse_grid(args.lr_grid)
        if args.seeds < 1 or args.eval_examples < 1 or args.validation_per_task < 1 or args.min_rank < 1:
            raise ConfigError("--seeds, --eval_examples, --validation_per_task and --min_rank must be >= 1")
        if not cfg.data.eval_files:
            raise ConfigError("the report needs held-out examples: set data.eval_files")
        carve = not args.validation_files and len(grid) > 1  # one lr: nothing to choose, nothing to carve
        rows = split_data(cfg, args, carve)
        base = cfg.cgc
        asked = args.budget_rank or total_rank(base)
        shape = (base.num_shared_experts, base.num_task_experts, args.moe_experts)
        budget = max(asked, smallest_budget(base.clusters, *shape, args.min_rank))
        presets = matched_budget(
            base.clusters, asked, *shape, args.min_rank, target_modules=base.target_modules, dropout=base.dropout
        )
        out = Path(args.out or Path(cfg.output_dir) / "compare")
        check_split_record(out / "data" / "split.json", split_record(cfg, args, carve))
    except ValueError as err:  # cgc.CGCError included
        error_exit(str(err))
    without = sorted(set(cfg.cgc.tasks) - {row["task"] for row in rows["validation"]})
    if without and len(grid) > 1:
        print(f"warning: no validation examples for {without}: they take no part in the lr choice", file=sys.stderr)
    # The same rows give the same files: a re-run after an interruption trains on what it trained on.
    files = {name: write_jsonl(out / "data" / f"{name}.jsonl", part) for name, part in rows.items()}
    return Plan(args, cfg, methods, grid, presets, budget, asked, rows, files, out, count(1))


def print_budget(plan: Plan) -> None:
    """The budget each method got, before spending time on training."""
    params = trainable_counts(plan.cfg, {m: plan.presets[m] for m in plan.methods})
    raised = f" (raised from {plan.asked}: no expert gets a rank below {plan.args.min_rank})"
    raised = raised if plan.budget > plan.asked else ""
    print(f"matched budget: {plan.budget} total expert rank per adapted layer{raised}")
    print(f"  {'method':<16}{'r':>5}{'experts':>9}{'total rank':>12}{'trainable params':>19}")
    for m in plan.methods:
        s = method_shape(plan.presets[m])
        print(f"  {LABELS[m]:<16}{s['r']:>5}{s['experts_per_layer']:>9}{s['total_rank']:>12}{params[m]:>19,}")
    n = {name: len(rows) for name, rows in plan.rows.items()}
    sizes = f"{n['train']} training, {n['validation']} validation, {n['eval']} eval examples"
    print(f"data: {sizes} ({plan.out / 'data'})")


def tune_learning_rates(plan: Plan) -> dict[str, dict]:
    """Per method: a grid_steps run at each lr of the grid, scored on validation; the best mean wins (a tie: the
    first listed). -> method -> {"lr", "gate_lr", "grid": {lr: score}}"""
    chosen = {}
    for m in plan.methods:
        scores = {}
        for lr in plan.grid if len(plan.grid) > 1 else []:
            n_validation = len(plan.rows["validation"])
            settings = run_settings(plan, lr, plan.cfg.seed, plan.grid_steps, plan.files["validation"], n_validation)
            label = f"{LABELS[m]}, grid lr {lr:g}"
            scores[f"{lr:g}"] = train_and_score(plan, m, plan.out / "grid" / m / f"lr_{lr:g}", settings, label)["mean"]
        lr = plan.grid[int(np.argmax(list(scores.values())))] if scores else plan.grid[0]
        chosen[m] = {"lr": lr, "gate_lr": gate_lr(plan, lr), **({"grid": scores} if scores else {})}
        if scores:
            print(f"{LABELS[m]}: validation scores {scores} -> lr {lr:g}", flush=True)
    return chosen


def final_runs(plan: Plan, chosen: dict[str, dict]) -> dict[str, list[Path]]:
    """Every method at its chosen lr, for every seed, scored on the eval files. -> method -> its run dirs"""
    finals: dict[str, list[Path]] = {}
    for m in plan.methods:
        finals[m] = []
        for seed in seeds(plan):
            steps, n_eval = plan.cfg.train.max_steps, plan.args.eval_examples
            settings = run_settings(plan, chosen[m]["lr"], seed, steps, plan.files["eval"], n_eval)
            run_dir = plan.out / m / f"seed_{seed}"
            train_and_score(plan, m, run_dir, settings, f"{LABELS[m]}, seed {seed}")
            finals[m].append(run_dir)
    return finals


def seesaw_report(plan: Plan, chosen: dict[str, dict], finals: dict[str, list[Path]], argv: list[str]) -> dict:
    """The report.json object: every method's runs, the interval of CGC-LoRA − the best baseline, the gates."""
    cfg = plan.cfg
    runs = {m: {"config": method_shape(plan.presets[m]), **chosen[m], "seeds": list(map(seesaw.read_run, finals[m]))}
            for m in plan.methods}  # fmt: skip
    setup = {
        "command": " ".join(["python recipes/compare.py", *map(shlex.quote, argv)]),
        "model": cfg.model.name_or_path,
        "steps": cfg.train.max_steps,
        "budget_rank": plan.budget,
        "budget_asked": plan.asked,
        "min_rank": plan.args.min_rank,
        "examples_per_task": seesaw.examples_per_task(next(iter(finals.values()))[0]),
        "seeds": plan.args.seeds,
        "seed_values": seeds(plan),
        "inputs": seesaw.inputs_note(plan.rows["train"] + plan.rows["validation"], plan.rows["eval"]),
        "tuning": seesaw.tuning_note(
            plan.grid,
            plan.grid_steps,
            len(plan.rows["validation"]),
            bool(plan.args.validation_files),
            plan.args.gate_lr,
            plan.gate_ratio,
            cfg.seed,
        ),
    }
    report = seesaw.build_report(runs, setup)
    metrics = task_metrics(cfg.cgc.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    baseline = seesaw.best_baseline(report["methods"])
    if OURS in plan.methods and baseline is not None:
        (ours, our_order), (theirs, their_order) = (
            seesaw.per_example_scores(finals[n], metrics) for n in (OURS, baseline)
        )
        if our_order != their_order:
            error_exit(f"{LABELS[OURS]} and {LABELS[baseline]} were scored on different eval examples")
        interval = paired_bootstrap(ours, theirs)
        report["comparison"] = {"baseline": baseline, "baseline_label": LABELS[baseline], **interval}
        print(seesaw.verdict(report["comparison"]))
    gate_files = [json.loads(RunDir(d).gates.read_text()) for d in finals.get(OURS, []) if RunDir(d).gates.is_file()]
    shares, uniform = gate_report.own_share(gate_files) if gate_files else ({}, 0.0)
    if shares:
        line = gate_report.summary(shares, uniform)
        report["gates"] = {"own_share": shares, "uniform_share": uniform, "summary": line}
    return report


# ==== helpers of the phases ====================================================================================


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", help="report dir (default: <output_dir>/compare)")
    parser.add_argument("--methods", default=",".join(LABELS), help=f"comma-separated subset of {list(LABELS)}")
    parser.add_argument("--budget_rank", type=int, help="total expert rank per layer (default: the config's CGC)")
    parser.add_argument("--min_rank", type=int, default=4, help="no expert below this rank: raises the budget")
    parser.add_argument("--moe_experts", type=int, default=4, help="MOELoRA's number of experts (default 4)")
    parser.add_argument("--seeds", type=int, default=3, help="final runs per method: seed, seed+1, ... (default 3)")
    parser.add_argument("--lr_grid", default="3e-4,1e-3,3e-3", help="learning rates tried per method (one: no grid)")
    parser.add_argument("--grid_steps", type=int, help="steps of each grid run (default: half of train.max_steps)")
    parser.add_argument("--gate_lr", type=float, help="fixed gate lr (default: the config's gate_lr/lr ratio)")
    parser.add_argument("--validation_per_task", type=int, default=32, help="validation examples carved per task")
    parser.add_argument("--validation_files", help="comma-separated validation files instead of a carved split")
    parser.add_argument("--eval_examples", type=int, default=50, help="eval examples per task (where there are)")
    parser.add_argument("--nproc", type=int, default=1, help="ranks per run (deepspeed launcher when > 1)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values), applied to every run")
    return parser.parse_args(argv)


def parse_grid(text: str) -> list[float]:
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lr_grid: comma-separated learning rates, got {text!r}") from None
    if not grid or min(grid) <= 0:
        raise ConfigError(f"--lr_grid: positive learning rates, got {text!r}")
    return list(dict.fromkeys(grid))  # each lr once, in the order given


def split_data(cfg: RecipeConfig, args, carve: bool) -> dict[str, list[dict]]:
    """-> {"train", "validation", "eval"} rows: validation carved from training, read from --validation_files
    (refused when it shares an example with training or eval), or none (one lr: every training example trains)."""
    d, task_map = cfg.data, cfg.cgc.task_map

    def rows(files) -> list[dict]:
        dataset = load_task_examples(files, task_map, d.format, d.task_field)
        return [{k: row[k] for k in ("task", "input", "target")} for row in dataset]

    evaluation, train, validation = rows(d.eval_files), rows(d.train_files), []
    if args.validation_files:
        validation = rows(args.validation_files.split(","))
        check_disjoint(validation, evaluation, train)
    elif carve:
        train, validation = carve_validation(train, evaluation, args.validation_per_task, cfg.seed)
    missing = sorted(set(task_map.tasks) - {row["task"] for row in train})
    if missing:
        raise DataError(f"no training examples left for {missing} once the validation split is taken out")
    return {"train": train, "validation": validation, "eval": evaluation}


def split_record(cfg: RecipeConfig, args, carved: bool) -> dict:
    """What decides the data files under <out>/data: a re-run with other values would mix two splits."""
    d = cfg.data
    return {"train_files": d.train_files, "eval_files": d.eval_files, "format": d.format, "task_field": d.task_field,
            "seed": cfg.seed, "validation_per_task": args.validation_per_task,
            "validation_files": args.validation_files,
            "carved": carved}  # fmt: skip


def check_split_record(path: Path, record: dict) -> None:
    if path.is_file() and json.loads(path.read_text()) != record:
        raise ConfigError(
            f"{path.parent} holds a split made with other data settings ({json.loads(path.read_text())}); its runs "
            "were trained on it: use another --out, or remove that directory to start over"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def gate_lr(plan: Plan, lr: float) -> float:
    return plan.args.gate_lr or lr * plan.gate_ratio


def seeds(plan: Plan) -> list[int]:
    return [plan.cfg.seed + i for i in range(plan.args.seeds)]


def run_settings(plan: Plan, lr: float, seed: int, steps: int, eval_file: Path, eval_n: int) -> dict:
    return {"seed": seed, "lr": lr, "gate_lr": gate_lr(plan, lr), "max_steps": steps, "eval_file": eval_file,
            "eval_examples": eval_n}  # fmt: skip


def train_and_score(plan: Plan, method: str, run_dir: Path, settings: dict, label: str) -> dict:
    """One finetune.py run (kept when finished, resumed when interrupted) -> its eval.json. A run made with other
    settings (another grid, steps, eval size ...) is refused, never reused."""
    label = f"[{next(plan.runs)}/{plan.total_runs}] {label}"
    try:
        config_path = write_run_config(plan.cfg, plan.presets[method], run_dir, plan.files["train"], settings)
    except ConfigError as err:
        error_exit(str(err))
    if is_done(run_dir):
        print(f"\n{label}: done earlier, kept", flush=True)
    else:
        print(f"\n{label}: {settings['max_steps']} steps, lr {settings['lr']:g}, seed {settings['seed']}", flush=True)
        code = run_to_end(launcher(plan.args.nproc) + [str(FINETUNE), "--config", str(config_path)], cwd=ROOT)
        if code != 0 or not is_done(run_dir):
            why = f"failed (exit code {code})" if code else "stopped before the end (interrupted)"
            error_exit(
                f"{run_dir} {why}; its output is above and in {run_dir}. Run the same command again to resume it.",
                code=code or 1,
            )
    return json.loads(RunDir(run_dir).eval_json.read_text())


def trainable_counts(cfg, configs: dict[str, cgc.CGCLoraConfig]) -> dict[str, int]:
    """Trainable parameters of each method, counted on the real base model (float: the counts do not depend on
    quantization). Attaching changes the model it is given, hence a copy per method."""
    m = cfg.model
    base, _ = load_recipe_model(m.name_or_path, m.gguf_file, "none", "float32", seed=cfg.seed)
    return {name: cgc.attach(copy.deepcopy(base), c).num_trainable_parameters() for name, c in configs.items()}


if __name__ == "__main__":
    sys.exit(main())
