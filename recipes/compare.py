"""The seesaw report: shared LoRA, per-task LoRA, MOELoRA and CGC-LoRA, and CGC-LoRA's controls (uniform gate,
MOELoRA per cluster, one cluster, a cluster per task), trained and evaluated on the same data, for the same steps,
at a matched budget (`cgc.presets.matched_budget`: the same trainable parameters, and/or the same served rank per
task), each at the learning rate its own validation grid picked, over several seeds.

    make seesaw   # the demo's instruction variant, 3 seeds, the default grid (the command is in the Makefile)
    python recipes/compare.py --config recipes/configs/tiny_cpu.yaml --seeds 2 --lr_grid 1e-3,3e-3 train.max_steps=8

1. Data: a validation split is carved from the training files (per task, seeded; disjoint from training and
   from the eval files by example) unless --validation_files gives one. Written under <out>/data/.
2. Learning rate of the experts: per method and budget, a --grid_steps run at each lr of --lr_grid (--grid_seeds
   runs: seed, seed+1, ...), scored on the validation split; the best mean picks the lr, and the report marks lrs
   validation cannot tell from it (paired bootstrap over the validation examples and the grid's seeds). CGC-LoRA's
   controls take CGC-LoRA's lr (those with another cluster map excepted); --lrs gives a method a known lr under both
   budgets. The gates' lr is their own (train.gate_lr, or --gate_lr). The eval files are never looked at here.
3. Final runs: per method, budget and seed (config seed, +1, ...), train.max_steps steps at the chosen lr, scored on
   the eval files (--eval_examples per task where the data has them).
4. Report: per budget, mean ± std over seeds, deltas vs per-task LoRA, paired bootstrap 95 % intervals of CGC-LoRA
   − the best baseline and − each control run beside it, over eval examples × seeds (all again on the held-out eval
   examples alone where some eval examples are training examples: data.allow_eval_overlap); the own-vs-shared
   split of every learned gate (CGC-LoRA's and its controls'): report.json, report.md, seesaw.png, budgets.png,
   gates.png (CGC-LoRA's), gates_<method>.png (a control's).

Every run is one run of recipes/finetune.py under --out (default <output_dir>/compare): grid/<method>/lr_<lr>/ and
<method>/seed_<seed>/ (a grid's further seeds: lr_<lr>_seed_<seed>/, so a rerun with more --grid_seeds keeps the
first), with `@served` after the method where the served budget gives it another configuration (a method configured
the same under both budgets runs once). Run the same command again after an interruption: finished runs are kept
(their scores and adapters; their checkpoints are deleted, and a grid run's adapters, unless --keep_checkpoints), an
interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shlex
import sys
from itertools import count
from pathlib import Path

import numpy as np

from cgc.adapter import presets
from cgc.adapter.presets import CONTROLS, LABELS, method_shape, takes_our_lr
from cgc.analysis import gate_report
from cgc.analysis import report as seesaw
from cgc.analysis.report import GIVEN, OURS
from cgc.analysis.report_files import write_report
from cgc.analysis.stats import mean_std
from cgc.data.validation_split import count_shared, example_keys, write_jsonl
from cgc.recipe import ConfigError, error_exit, load_recipe_config
from cgc.recipe.child_runs import is_done, launcher, prune_finished, run_to_end, write_run_config
from cgc.recipe.comparison import (
    Plan,
    check_split_record,
    parse_arguments,
    parse_given_lrs,
    parse_grid,
    rank_ratio,
    split_data,
    split_record,
    trainable_counts,
)
from cgc.training.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
FINETUNE = ROOT / "recipes" / "finetune.py"


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv, __doc__)
    plan = make_plan(args)  # config, data split and the method configs: checked before anything trains
    print_budgets(plan)
    chosen = tune_learning_rates(plan)  # 1. the lr of each method, from its validation score
    finals = final_runs(plan, chosen)  # 2. every method at its lr, every seed, scored on the eval files
    report = seesaw_report(plan, chosen, finals, sys.argv[1:] if argv is None else argv)  # 3. the report
    written = write_report(report, plan.out)
    print(f"\n{(plan.out / 'report.md').read_text()}\nwritten: {', '.join(map(str, written))}")


# ==== the phases, in the order main() runs them ================================================================


def make_plan(args) -> Plan:
    """Config, data (the validation split carved or read) and each method's config; bad input exits 2."""
    try:
        cfg = load_recipe_config(args.config, args.overrides)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in LABELS]
        if unknown or not methods:
            raise ConfigError(f"--methods: unknown {unknown}; choose from {list(LABELS)}")
        matches = [m for m in presets.MATCHES if m in {m.strip() for m in args.match.split(",")}]  # trainable first
        if not matches or any(m.strip() not in presets.MATCHES for m in args.match.split(",")):
            raise ConfigError(f"--match: one or both of {', '.join(presets.MATCHES)}, got {args.match!r}")
        if args.served_lr == "trainable" and "trainable" not in matches:
            raise ConfigError(
                "--served_lr trainable takes each method's lr from the trainable budget: add it to --match"
            )
        grid, given = parse_grid(args.lr_grid), parse_given_lrs(args.lrs, methods)
        if min(args.seeds, args.grid_seeds, args.eval_examples, args.validation_per_task, args.min_rank) < 1:
            raise ConfigError("--seeds, --grid_seeds, --eval_examples, --validation_per_task, --min_rank must be >= 1")
        if not cfg.data.eval_files:
            raise ConfigError("the report needs held-out examples: set data.eval_files")
        carve = not args.validation_files and len(grid) > 1  # one lr: nothing to choose, nothing to carve
        rows = split_data(cfg, args, carve)
        base = cfg.cgc
        asked = args.budget_rank or presets.total_rank(base)
        shape = (base.num_shared_experts, base.num_task_experts, args.moe_experts, args.min_rank)
        ratio = rank_ratio(base)
        graded = (*(m for m in methods if m not in CONTROLS), OURS)  # the controls do not raise the budget
        budget = max(asked, presets.smallest_budget(base.clusters, *shape, ratio, methods=graded))
        common = {"target_modules": base.target_modules, "dropout": base.dropout, "alpha": base.alpha}
        common |= {"scaling": base.scaling, "gate_init": base.gate_init}
        configs = {
            match: presets.matched_budget(base.clusters, asked, *shape, match, (*methods, OURS), ratio, **common)
            for match in presets.MATCHES
        }
        out = Path(args.out or Path(cfg.output_dir) / "compare")
        check_split_record(out / "data" / "split.json", split_record(cfg, args, carve))
    except ValueError as err:  # cgc.CGCError included
        error_exit(str(err))
    if args.grid_seeds > 1 and (len(grid) == 1 or set(methods) <= set(given)):
        print(
            "warning: --grid_seeds has no effect: no lr grid runs (one lr, or --lrs for every method)", file=sys.stderr
        )
    without = sorted(set(cfg.cgc.tasks) - {row["task"] for row in rows["validation"]})
    if without and len(grid) > 1:
        print(f"warning: no validation examples for {without}: they take no part in the lr choice", file=sys.stderr)
    # The same rows give the same files: a re-run after an interruption trains on what it trained on.
    files = {name: write_jsonl(out / "data" / f"{name}.jsonl", part) for name, part in rows.items()}
    return Plan(args, cfg, methods, matches, grid, given, configs, budget, asked, rows, files, out, count(1))


def print_budgets(plan: Plan) -> None:
    """The budget each method got, before spending time on training."""
    configs = {plan.run_name(match, m): plan.presets[match][m] for match in plan.matches for m in plan.methods}
    params = trainable_counts(plan.cfg, configs)
    raised = f" (raised from {plan.asked}: no expert gets a rank below {plan.args.min_rank})"
    raised = raised if plan.budget > plan.asked else ""
    served = plan.presets["served"][OURS].exported_rank
    print(f"matched budgets: {plan.budget} total expert rank per adapted layer{raised}; served rank {served} per task")
    head = f"  {'method':<30}{'budget':>10}{'r':>5}{'experts':>9}{'total rank':>12}{'served rank':>13}"
    print(head + f"{'trainable params':>19}")
    for match in plan.matches:
        for m in plan.methods:
            s, name = method_shape(plan.presets[match][m]), plan.run_name(match, m)
            print(
                f"  {LABELS[m]:<30}{match:>10}{s['r']:>5}{s['experts_per_layer']:>9}{s['total_rank']:>12}"
                f"{s['served_rank']:>13}{params[name]:>19,}"
            )
    n = {name: len(rows) for name, rows in plan.rows.items()}
    print(f"data: {n['train']} training, {n['validation']} validation, {n['eval']} eval examples ({plan.out / 'data'})")


def tune_learning_rates(plan: Plan) -> dict[tuple[str, str], dict]:
    """Per method and budget: grid_steps runs at each lr of the grid (one per grid seed), scored on validation; the
    best mean over them wins (a tie: the first listed). -> (budget, method) -> {"lr", "gate_lr", "grid": {lr: mean
    score}, "grid_ties": [lrs validation cannot tell from the choice]} or {"lr", "lr_from"}"""
    chosen = {}
    order = sorted(plan.methods, key=lambda m: takes_our_lr(m, plan.methods))  # CGC-LoRA before those taking its lr
    for match in plan.matches:
        for m in order:
            if m in plan.given:  # --lrs: the same lr under both budgets (a step's size does not depend on the rank)
                chosen[(match, m)] = {"lr": plan.given[m], "gate_lr": plan.gate_lr, "lr_from": GIVEN}
                continue
            if not plan.tuned(m, match):
                control = takes_our_lr(m, plan.methods)
                source = (match, OURS) if control else ("trainable", m) if len(plan.grid) > 1 else None
                lr = chosen[source]["lr"] if source else plan.grid[0]
                lr_from = {"lr_from": LABELS[OURS] if control else "trainable budget"} if source else {}
                chosen[(match, m)] = {"lr": lr, "gate_lr": plan.gate_lr, **lr_from}
                continue
            scores, runs, name, n_val = {}, {}, plan.run_name(match, m), len(plan.rows["validation"])
            for lr in plan.grid:
                runs[f"{lr:g}"], means = [], []
                for seed in seeds(plan, plan.args.grid_seeds):  # the first seed's dir keeps its one-seed name
                    tail = f"_seed_{seed}" if seed != plan.cfg.seed else ""
                    settings = run_settings(plan, lr, seed, plan.grid_steps, plan.files["validation"], n_val)
                    label = f"{LABELS[m]} ({match}), grid lr {lr:g}, seed {seed}"
                    grid_run = plan.out / "grid" / name / f"lr_{lr:g}{tail}"
                    result = train_and_score(plan, match, m, grid_run, settings, label, keep_adapters=False)
                    means.append(result["mean"])
                    runs[f"{lr:g}"].append(grid_run)
                scores[f"{lr:g}"] = float(np.mean(means))
            lr = plan.grid[int(np.argmax(list(scores.values())))]
            ties = seesaw.lrs_within_noise(runs, f"{lr:g}", plan.metrics)
            chosen[(match, m)] = {"lr": lr, "gate_lr": plan.gate_lr, "grid": scores, "grid_ties": ties}
            noise = f" (validation cannot tell it from {', '.join(ties)})" if ties else ""
            print(f"{LABELS[m]} ({match}): validation scores {scores} -> lr {lr:g}{noise}", flush=True)
    return chosen


def final_runs(plan: Plan, chosen: dict) -> dict[tuple[str, str], list[Path]]:
    """Every method at its chosen lr, for every budget and seed, scored on the eval files. -> its run dirs. Final
    runs made earlier with other settings (a choice that moved with more --grid_seeds) are all named before any
    trains."""
    runs = {}  # (budget, method) -> [(run dir, settings), ...]
    for match in plan.matches:
        for m in plan.methods:
            steps, n_eval, lr = plan.cfg.train.max_steps, plan.args.eval_examples, chosen[(match, m)]["lr"]
            runs[(match, m)] = [
                (
                    plan.out / plan.run_name(match, m) / f"seed_{s}",
                    run_settings(plan, lr, s, steps, plan.files["eval"], n_eval),
                )
                for s in seeds(plan)
            ]
    refused = []
    for (match, m), planned in runs.items():
        for run_dir, settings in planned:
            try:
                write_run_config(plan.cfg, plan.presets[match][m], run_dir, plan.files["train"], settings, True)
            except ConfigError as err:
                refused.append(str(err))
    if refused:
        error_exit("\n".join(dict.fromkeys(refused)))  # a run shared by both budgets is named once
    for (match, m), planned in runs.items():
        for run_dir, settings in planned:
            train_and_score(plan, match, m, run_dir, settings, f"{LABELS[m]} ({match}), seed {settings['seed']}")
    return {key: [run_dir for run_dir, _ in planned] for key, planned in runs.items()}


def seesaw_report(plan: Plan, chosen: dict, finals: dict, argv: list[str]) -> dict:
    """The report.json object: every method's runs per budget, the intervals of CGC-LoRA − the best baseline and −
    each control under each budget, the gates."""
    budgets = {
        match: {m: method_runs(plan, match, m, chosen[(match, m)], finals[(match, m)]) for m in plan.methods}
        for match in plan.matches
    }
    report, metrics = seesaw.build_report(budgets, setup(plan, chosen, finals, argv)), plan.metrics
    trained = example_keys(plan.rows["train"])
    for match, budget in report["budgets"].items():
        scored = {m: seesaw.per_example_scores(finals[(match, m)], metrics) for m in plan.methods}
        (_, order), *rest = scored.values()
        if any(other != order for _, other in rest):
            error_exit(f"the final runs ({match} budget) were scored on different eval examples; cannot pair them")
        overlap, baseline = count_shared(order, trained), seesaw.best_baseline(budget["methods"])
        # each mean, and the intervals, also on the eval examples training lacks
        held = {m: seesaw.held_out(s, order, trained) for m, (s, _) in scored.items()} if overlap else {}
        for m, scores in held.items():
            if scores:
                row = budget["methods"][m]
                row["held_out_mean"], row["held_out_mean_std"] = mean_std(seesaw.seed_means(scores))
        budget |= seesaw.comparisons({m: s for m, (s, _) in scored.items()}, held, baseline)
        for line in seesaw.comparison_lines(budget):
            print(f"{match} budget: {line.removeprefix('- ')}")
        if overlap:
            interval = any(key.endswith("_held_out") for key in budget)  # an interval on the held-out examples
            report["setup"] |= {
                "eval_in_training": overlap,
                "eval_overlap": seesaw.overlap_note(overlap, order, interval),
            }
    first = plan.matches[0]  # gates that learned (method_gates keeps those that split shared and own experts)
    gated = {m: finals.get((first, m), []) for m in plan.methods if plan.presets[first][m].train_gate}
    if gates := gate_report.method_gates(gated, first):
        report["gates"] = gates
    return report


# ==== helpers of the phases ====================================================================================


def seeds(plan: Plan, n: int | None = None) -> list[int]:
    """The config's seed, +1, ...: n of them (default --seeds)."""
    return [plan.cfg.seed + i for i in range(n or plan.args.seeds)]


def run_settings(plan: Plan, lr: float, seed: int, steps: int, eval_file: Path, eval_n: int) -> dict:
    return {"seed": seed, "lr": lr, "gate_lr": plan.gate_lr, "max_steps": steps, "eval_file": eval_file,
            "eval_examples": eval_n}  # fmt: skip


def train_and_score(
    plan: Plan, match: str, method: str, run_dir: Path, settings: dict, label: str, keep_adapters: bool = True
) -> dict:
    """One finetune.py run (kept when finished, resumed when interrupted) -> its eval.json. A run made with other
    settings (another grid, steps, eval size ...) is refused, never reused. Once finished, its checkpoints go (and
    its adapters, unless `keep_adapters`), except with --keep_checkpoints."""
    try:
        config_path = write_run_config(plan.cfg, plan.presets[match][method], run_dir, plan.files["train"], settings)
    except ConfigError as err:
        error_exit(str(err))
    if is_done(run_dir):
        print(f"\n{label}: done earlier, kept", flush=True)  # (or made under the other budget: the same run)
    else:
        label = f"[{next(plan.runs)}/{plan.total_runs}] {label}"
        print(f"\n{label}: {settings['max_steps']} steps, lr {settings['lr']:g}, seed {settings['seed']}", flush=True)
        code = run_to_end(launcher(plan.args.nproc) + [str(FINETUNE), "--config", str(config_path)], cwd=ROOT)
        if code != 0 or not is_done(run_dir):
            why = f"failed (exit code {code})" if code else "stopped before the end (interrupted)"
            error_exit(
                f"{run_dir} {why}; its output is above and in {run_dir}. Run the same command again to resume it.",
                code=code or 1,
            )
    if not plan.args.keep_checkpoints:
        prune_finished(run_dir, keep_adapters)
    return json.loads(RunDir(run_dir).eval_json.read_text())


def method_runs(plan: Plan, match: str, method: str, chosen: dict, runs: list[Path]) -> dict:
    """What the report takes of one method under one budget: its shape, lr, runs and exported bytes."""
    shape, exported = method_shape(plan.presets[match][method]), RunDir(runs[0]).peft_bytes()
    return {"config": shape, **chosen, "seeds": list(map(seesaw.read_run, runs)), "export_bytes": exported}


def setup(plan: Plan, chosen: dict, finals: dict, argv: list[str]) -> dict:
    """The report's setup: the command, the model, steps, seeds, budgets, the data and how the lrs were chosen."""
    first = finals.get((plan.matches[0], OURS), finals[next(iter(finals))])[0]  # CGC-LoRA's when it ran
    seen = json.loads(RunDir(first).summary.read_text()).get("examples_per_task", {})
    args = plan.args
    validation = (len(plan.rows["validation"]), bool(args.validation_files))
    lrs = (
        plan.gate_lr,
        seeds(plan, args.grid_seeds),
        plan.given,
        any("grid" in c for c in chosen.values()),
    )  # the last: a grid ran
    return {
        "command": " ".join(["python recipes/compare.py", *map(shlex.quote, argv)]),
        "model": plan.cfg.model.name_or_path,
        "steps": plan.cfg.train.max_steps,
        "budget_rank": plan.budget,
        "budget_asked": plan.asked,
        "min_rank": args.min_rank,
        "served_rank": plan.presets["served"][OURS].exported_rank,
        "examples_per_task": seesaw.eval_examples_per_task(first),
        "seeds": args.seeds,
        "seed_values": seeds(plan),
        "grid_seeds": args.grid_seeds,
        "inputs": seesaw.inputs_note(plan.rows["train"] + plan.rows["validation"], plan.rows["eval"]),
        "tuning": seesaw.tuning_note(plan.grid, plan.grid_steps, *validation, *lrs),
        **({"training_examples": seesaw.training_note(seen)} if seen else {}),
    }


if __name__ == "__main__":
    sys.exit(main())
