"""The seesaw report: per-task scores of several methods side by side (mean ± std over seeds), each method's
per-task delta against per-task LoRA (one adapter per task, so no task has to share with another), the
learning rate each method got from its validation grid, paired bootstrap intervals of CGC-LoRA − the best
baseline and − each of its controls run beside it, and what the gates of CGC-LoRA and its controls learned:
report.json, report.md, seesaw.png (and gates.png, gates_<method>.png).

"Seesaw": training tasks together lifts some and pushes others down. A method's *worst drop* is how far its
worst task falls below per-task LoRA (0 when no task falls), the number the CGC-LoRA paper's design targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cgc.adapter.presets import BASELINES, CONTROLS, LABELS
from cgc.analysis.stats import mean_std, paired_bootstrap
from cgc.evaluation.metrics import MetricSpec, example_scores
from cgc.training.run_dir import RunDir

REFERENCE = "per_task_lora"
OURS = "cgc_lora"
GIVEN = "given"  # lr_from of a method whose lr --lrs gave
TASK_HIDDEN = "task hidden from the input (only task-id methods can know it)"
BUDGET_TITLES = {
    "trainable": "Matched trainable parameters (the same total expert rank per adapted layer)",
    "served": "Matched served rank (every task's exported adapter has CGC-LoRA's rank)",
}


def build_report(budgets: dict[str, dict[str, dict]], setup: dict) -> dict:
    """`budgets`: budget ("trainable", "served") -> method -> {"config": shape (cgc.presets.method_shape),
    "seeds": [{"eval": eval.json, "summary": run_summary.json}, ...], optional "lr", "gate_lr", "grid" ({lr:
    mean validation score over the grid seeds}), "grid_ties" (lrs validation cannot tell from the choice),
    "lr_from" (the method whose lr it took), "export_bytes"}. -> the report.json object."""
    first = next(iter(next(iter(budgets.values())).values()))["seeds"][0]["eval"]["tasks"]
    tasks = list(first)
    report = {"setup": setup, "reference": REFERENCE, "tasks": {t: first[t]["metric"] for t in tasks}, "budgets": {}}
    for match, methods in budgets.items():
        rows = {name: method_row(name, method, tasks) for name, method in methods.items()}
        reference = rows.get(REFERENCE)
        for row in rows.values():
            if reference is not None:
                row["delta_vs_per_task_lora"] = {t: row["scores"][t] - reference["scores"][t] for t in tasks}
                row["worst_drop"] = max(0.0, -min(row["delta_vs_per_task_lora"].values()))
        report["budgets"][match] = {"methods": rows}
    return report


def method_row(name: str, method: dict, tasks: list[str]) -> dict:
    """One method's line of the report: its shape, lr, and mean ± std over seeds of every score."""
    runs = method["seeds"]
    per_seed = [{t: run["eval"]["tasks"][t]["score"] for t in tasks} for run in runs]
    seed_means = [sum(s.values()) / len(tasks) for s in per_seed]
    mean, std = mean_std(seed_means)
    seen = runs[0]["summary"].get("examples_per_task")  # absent in runs of versions before it was recorded
    row = {
        "label": LABELS.get(name, name),
        **method["config"],
        **{k: method[k] for k in ("lr", "gate_lr", "grid", "grid_ties", "lr_from", "export_bytes") if k in method},
        "trainable_params": runs[0]["summary"]["trainable_params"],
        "final_loss": mean_std([run["summary"]["final_loss"] for run in runs])[0],
        "train_tokens_per_s": mean_std([run["summary"]["tokens_per_s"] for run in runs])[0],
        "scores": {t: mean_std([s[t] for s in per_seed])[0] for t in tasks},
        "scores_std": {t: mean_std([s[t] for s in per_seed])[1] for t in tasks},
        "exact_match": {t: mean_std([r["eval"]["tasks"][t]["exact_match"] for r in runs])[0] for t in tasks},
        "seed_means": seed_means,
        "mean": mean,
        "mean_std": std,
        **({"examples_per_task": seen} if seen else {}),
    }
    row["mean_exact_match"] = sum(row["exact_match"].values()) / len(tasks)
    if "grid" in method and len(method["grid"]) > 1:
        grid = [float(lr) for lr in method["grid"]]
        row["lr_at_edge"] = method["lr"] in (min(grid), max(grid))  # the best may lie beyond: widen the grid
    return row


def read_run(run_dir: Path) -> dict:
    """A finished run's eval.json and run_summary.json, as build_report takes them."""
    run = RunDir(run_dir)
    return {"eval": json.loads(run.eval_json.read_text()), "summary": json.loads(run.summary.read_text())}


def per_example_scores(run_dirs: list[Path], metrics: dict[str, MetricSpec]) -> tuple[dict[str, np.ndarray], list]:
    """({task: (seeds, examples) scores of each eval answer}, the examples' (task, input) order), from each run's
    eval_predictions.jsonl (the same examples in the same order in every run: checked)."""
    per_seed, order = [], None
    for run_dir in run_dirs:
        rows = [json.loads(line) for line in RunDir(run_dir).eval_predictions.read_text().splitlines()]
        keys = [(r["task"], r["input"]) for r in rows]
        if order is not None and keys != order:
            raise RuntimeError(f"{run_dir}: its eval examples differ from the other runs'; cannot pair them")
        order = keys
        scores = {}
        for task in dict.fromkeys(r["task"] for r in rows):
            mine = [r for r in rows if r["task"] == task]
            scores[task] = example_scores(metrics[task], [r["prediction"] for r in mine], [r["target"] for r in mine])
        per_seed.append(scores)
    return {task: np.array([s[task] for s in per_seed]) for task in per_seed[0]}, order


def overlap_note(counts: dict[str, int], order: list[tuple[str, str]], interval: bool) -> str:
    """report.md's line on the eval examples that are training examples (`counts`: per task, as
    `cgc.data.validation_split.count_shared` gives them for `order`); `interval`: whether the report has held-out
    intervals (CGC-LoRA's or a control's, against a baseline or a control). Their scores measure how well a method
    recalls what it was trained on, not how it does on inputs it has not seen (what a grid's validation split,
    disjoint from training, chose each lr for)."""
    per_task = ", ".join(f"{task} {n}" for task, n in counts.items())
    line = f"{sum(counts.values())} of the {len(order)} eval examples have a training example's (task, input) "
    line += f"({per_task}): their scores measure recall of training data."
    totals = {task: sum(1 for t, _ in order if t == task) for task, _ in order}
    gone = [task for task, n in counts.items() if n == totals[task]]
    if len(gone) == len(totals):
        return line + " No eval example is held out, so there are no held-out numbers."
    n = len(totals) - len(gone)
    line += " The held-out mean leaves them out" + (
        f" ({', '.join(gone)} drop out: it averages {n} task{'s' * (n != 1)})" if gone else ""
    )
    if interval:
        line += ", and so do the held-out intervals (of the same pairs of methods as on every eval example)"
    return line + "."


def held_out(scores: dict[str, np.ndarray], order: list, trained: set[tuple[str, str]]) -> dict[str, np.ndarray]:
    """`per_example_scores`' output restricted to the eval examples whose (task, input) is not in `trained` (the
    training examples' `cgc.data.validation_split.example_keys`): task -> (seeds, held-out examples); a task with
    none left drops out."""
    kept = {}
    for task, per_seed in scores.items():
        keep = np.array([(t, text) not in trained for t, text in order if t == task], dtype=bool)
        if keep.any():
            kept[task] = per_seed[:, keep]
    return kept


def seed_means(scores: dict[str, np.ndarray]) -> list[float]:
    """Each seed's mean over tasks of its mean per-example score (the mean eval.json gives, on these examples)."""
    return [float(np.mean([s[i].mean() for s in scores.values()])) for i in range(len(next(iter(scores.values()))))]


def lrs_within_noise(grid_runs: dict[str, list[Path]], chosen: str, metrics: dict[str, MetricSpec]) -> list[str]:
    """The grid's other lrs that validation cannot tell apart from the chosen one: the paired bootstrap 95 %
    interval of their difference (over the same validation examples and grid seeds) includes 0. A small validation
    split (the demo's 16 examples a task) or one seed cannot resolve differences of a few points. `grid_runs`: lr
    (as the report writes it) -> its grid runs' dirs, one per seed, in the same seed order for every lr. No
    validation answers to pair: nothing to say ([])."""
    if len({len(runs) for runs in grid_runs.values()}) > 1:
        raise RuntimeError(f"every lr needs runs of the same grid seeds, got {[len(r) for r in grid_runs.values()]}")
    scores, orders = {}, set()
    for lr, runs in grid_runs.items():
        per_task, order = per_example_scores(runs, metrics)  # task -> (seeds, examples)
        scores[lr], orders = {task: s for task, s in per_task.items() if s.shape[1]}, orders | {tuple(order)}
    if len(orders) > 1:
        raise RuntimeError("the grid runs were scored on different validation examples; cannot pair them")
    if not scores[chosen]:
        return []
    return [lr for lr in scores if lr != chosen and not paired_bootstrap(scores[chosen], scores[lr])["significant"]]


def eval_examples_per_task(run_dir: Path) -> str:
    """The eval examples each task of a run actually had (fewer than asked where the data has fewer)."""
    tasks = json.loads(RunDir(run_dir).eval_json.read_text())["tasks"]
    counts = sorted({r["n"] for r in tasks.values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def tuning_note(
    grid: list[float],
    grid_steps: int,
    n_validation: int,
    validation_given: bool,
    gate_lr: float,
    grid_seeds: list[int],
    given: dict[str, float] | None = None,
    grid_ran: bool = True,
) -> str:
    """How each method's learning rate was chosen, for report.md (`given`: method -> the lr --lrs gave it;
    `grid_ran`: whether any method ran the grid; `grid_seeds`: the seeds of each lr's grid runs)."""
    gates = f"The gates' learning rate is their own: {gate_lr:g} at every step of every run (no warmup, no decay)."
    controls = "CGC-LoRA's controls take CGC-LoRA's lr, but for those with another cluster map (an lr of their own)."
    if given:
        lrs = ", ".join(f"{LABELS.get(m, m)} {lr:g}" for m, lr in given.items())
        gates = f"Given with --lrs (not tuned in this comparison): {lrs}. {gates}"
    where = "--validation_files" if validation_given else "carved from the training files (disjoint by example)"
    if len(grid) == 1:
        return f"Learning rate: {grid[0]:g} for every method not given (no grid); {controls} {gates}"
    if not grid_ran:
        return f"No lr grid ran; the {n_validation} validation examples were still {where}. {controls} {gates}"
    runs = f"seed {grid_seeds[0]}" if len(grid_seeds) == 1 else f"seeds {', '.join(map(str, grid_seeds))}: their mean"
    return (
        f"Learning rate of the experts: per method, the best mean validation score of {grid_steps}-step runs ({runs}"
        f") at each lr of {', '.join(f'{lr:g}' for lr in grid)}; validation: {n_validation} examples {where}; "
        f"an exact tie goes to the first lr listed; {controls} The eval examples were not used for the choice. {gates}"
    )


def inputs_note(train: list[dict], evaluation: list[dict]) -> str:
    """Whether the input alone tells the task: the share of eval prompts that also occur under another task."""
    tasks_of: dict[str, set[str]] = {}
    for row in train + evaluation:
        tasks_of.setdefault(row["input"], set()).add(row["task"])
    shared = sum(1 for row in evaluation if len(tasks_of[row["input"]]) > 1) / len(evaluation)
    if shared:
        return f"{TASK_HIDDEN}: {shared:.0%} of the eval prompts occur under more than one task"
    return "every prompt tells its task (no input occurs under two tasks): every method can know the task"


def best_baseline(report_methods: dict[str, dict]) -> str | None:
    """The baseline (not CGC-LoRA, nor one of its controls) with the highest mean score."""
    others = {n: r["mean"] for n, r in report_methods.items() if n in BASELINES and n != OURS}
    return max(others, key=others.get) if others else None


def comparisons(scored: dict, held: dict, baseline: str | None) -> dict:
    """A budget's paired intervals of CGC-LoRA (or a control of it) − another method (`paired_bootstrap` over seeds
    x eval examples). `scored`: method -> task -> (seeds, examples); `held`: the same on the held-out eval examples
    (empty where none is a training example); `baseline`: the best baseline's name, or None.
    -> `comparison` (CGC-LoRA against `baseline`); `controls`: CGC-LoRA against each of its controls run beside it,
    what its gate, task experts or cluster map add on this data (e.g. whether the user's map beats one cluster of
    every task, `cgc_one_cluster`); `controls_vs_baseline`: each control against `baseline` (a control may be the
    configuration a user keeps: one cluster, run without CGC-LoRA); each `..._held_out`: the same on `held`."""

    def against(ours: str, other: str, where: dict) -> dict:
        names = {"method": ours, "method_label": LABELS[ours], "baseline": other, "baseline_label": LABELS[other]}
        return names | paired_bootstrap(where[ours], where[other])

    controls, both = [m for m in scored if m in CONTROLS], (("", scored), ("_held_out", held))
    found = {}
    for suffix, where in both:
        if where.get(OURS) and baseline is not None:
            found["comparison" + suffix] = against(OURS, baseline, where)
    for suffix, where in both:
        if where.get(OURS) and controls:
            found["controls" + suffix] = {m: against(OURS, m, where) for m in controls}
    for suffix, where in both:
        if baseline is not None and where.get(baseline) and any(where.get(m) for m in controls):
            found["controls_vs_baseline" + suffix] = {m: against(m, baseline, where) for m in controls if where.get(m)}
    return found


def verdict(comparison: dict) -> str:
    """One sentence on CGC-LoRA (or a control of it) − another method (the best baseline, or a control)."""
    c, ours = comparison, comparison["method_label"]
    interval = f"{c['difference']:+.3f} (95 % interval {c['low']:+.3f} to {c['high']:+.3f})"
    if not c["significant"]:
        return f"{ours} − {c['baseline_label']}: {interval}: **no significant difference**."
    better = "better" if c["difference"] > 0 else "worse"
    return f"{ours} − {c['baseline_label']}: {interval}: {ours} is significantly {better}."


def comparison_lines(budget: dict) -> list[str]:
    """report.md's sentences on a budget's intervals (`comparisons`' keys): the best baseline's, then the controls'
    as a list, then each control against the best baseline; each again on the held-out eval examples where the
    report has them."""
    lines = [verdict(budget["comparison"])] if "comparison" in budget else []
    if "comparison_held_out" in budget:
        lines.append(f"Held-out eval examples only: {verdict(budget['comparison_held_out'])}")
    for key, which in (("controls", "every eval example"), ("controls_held_out", "held-out eval examples only")):
        if key in budget:
            lines.append(f"Against its controls (what each part adds here; {which}):")
            lines += [f"- {verdict(c)}" for c in budget[key].values()]
    for key, which in (("controls_vs_baseline", "every eval example"), ("controls_vs_baseline_held_out", "held-out")):
        if key in budget:
            lines.append(f"CGC-LoRA's controls against the best baseline ({which}):")
            lines += [f"- {verdict(c)}" for c in budget[key].values()]
    return lines


def training_note(seen: dict[str, int]) -> str:
    low, high = min(seen.values()), max(seen.values())
    return (
        f"Training examples per task in a final run: {low} to {high} drawn (CGC-LoRA, first seed; repeats of an "
        "upsampled task included); each task's own experts see only these, the cluster's shared experts those of "
        "every task of the cluster."
    )
