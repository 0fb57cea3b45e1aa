"""The seesaw report: per-task scores of several methods side by side (mean ± std over seeds), each method's
per-task delta against per-task LoRA (one adapter per task, so no task has to share with another), the
learning rate each method got from its validation grid, a paired bootstrap interval of CGC-LoRA − the best
baseline, and what CGC-LoRA's gates learned: report.json, report.md, seesaw.png (and gates.png).

"Seesaw": training tasks together lifts some and pushes others down. A method's *worst drop* is how far its
worst task falls below per-task LoRA (0 when no task falls), the number the CGC-LoRA paper's design targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cgc.analysis.stats import mean_std
from cgc.evaluation.metrics import MetricSpec, example_scores
from cgc.training.run_dir import RunDir

REFERENCE = "per_task_lora"
OURS = "cgc_lora"
LABELS = {
    "shared_lora": "LoRA (shared)",
    "per_task_lora": "per-task LoRA",
    "moelora": "MOELoRA",
    "cgc_lora": "CGC-LoRA",
}
TASK_HIDDEN = "task hidden from the input (only task-id methods can know it)"


def build_report(methods: dict[str, dict], setup: dict) -> dict:
    """`methods`: name -> {"config": shape, "seeds": [{"eval": eval.json, "summary": run_summary.json}, ...],
    optional "lr", "gate_lr", "grid" ({lr: validation score})}. -> the report.json object."""
    first = next(iter(methods.values()))["seeds"][0]["eval"]["tasks"]
    tasks = list(first)
    report = {"setup": setup, "reference": REFERENCE, "tasks": {t: first[t]["metric"] for t in tasks}, "methods": {}}
    for name, method in methods.items():
        runs = method["seeds"]
        per_seed = [{t: run["eval"]["tasks"][t]["score"] for t in tasks} for run in runs]
        seed_means = [sum(s.values()) / len(tasks) for s in per_seed]
        mean, std = mean_std(seed_means)
        row = {
            "label": LABELS.get(name, name),
            **method["config"],
            **{k: method[k] for k in ("lr", "gate_lr", "grid") if k in method},
            "trainable_params": runs[0]["summary"]["trainable_params"],
            "final_loss": mean_std([run["summary"]["final_loss"] for run in runs])[0],
            "train_tokens_per_s": mean_std([run["summary"]["tokens_per_s"] for run in runs])[0],
            "scores": {t: mean_std([s[t] for s in per_seed])[0] for t in tasks},
            "scores_std": {t: mean_std([s[t] for s in per_seed])[1] for t in tasks},
            "exact_match": {t: mean_std([r["eval"]["tasks"][t]["exact_match"] for r in runs])[0] for t in tasks},
            "seed_means": seed_means,
            "mean": mean,
            "mean_std": std,
        }
        row["mean_exact_match"] = sum(row["exact_match"].values()) / len(tasks)
        report["methods"][name] = row
    reference = report["methods"].get(REFERENCE)
    for row in report["methods"].values():
        if reference is not None:
            row["delta_vs_per_task_lora"] = {t: row["scores"][t] - reference["scores"][t] for t in tasks}
            row["worst_drop"] = max(0.0, -min(row["delta_vs_per_task_lora"].values()))
    return report


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


def examples_per_task(run_dir: Path) -> str:
    """The eval examples each task of a run actually had (fewer than asked where the data has fewer)."""
    tasks = json.loads(RunDir(run_dir).eval_json.read_text())["tasks"]
    counts = sorted({r["n"] for r in tasks.values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def tuning_note(
    grid: list[float],
    grid_steps: int,
    n_validation: int,
    validation_given: bool,
    gate_lr: float | None,
    gate_ratio: float,
    seed: int,
) -> str:
    """How each method's learning rate was chosen, for report.md."""
    if len(grid) == 1:
        return f"Learning rate: {grid[0]:g} for every method (no grid)."
    where = "--validation_files" if validation_given else "carved from the training files (disjoint by example)"
    gates = f"fixed at {gate_lr:g}" if gate_lr else f"{gate_ratio:.3g} × the lr"
    return (
        f"Learning rate: per method, the best mean validation score of {grid_steps}-step runs (seed {seed}) at "
        f"each lr of {', '.join(f'{lr:g}' for lr in grid)}; validation: {n_validation} examples {where}; "
        f"gate lr {gates}; a tie goes to the first lr listed. The eval examples were not used for the choice."
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
    """The method other than CGC-LoRA with the highest mean score."""
    others = {n: r["mean"] for n, r in report_methods.items() if n != OURS}
    return max(others, key=others.get) if others else None


def verdict(comparison: dict) -> str:
    """One sentence on CGC-LoRA − the best baseline."""
    c = comparison
    interval = f"{c['difference']:+.3f} (95 % interval {c['low']:+.3f} to {c['high']:+.3f})"
    if not c["significant"]:
        return f"CGC-LoRA − {c['baseline_label']}: {interval}: **no significant difference**."
    better = "better" if c["difference"] > 0 else "worse"
    return f"CGC-LoRA − {c['baseline_label']}: {interval}: CGC-LoRA is significantly {better}."


def markdown(report: dict) -> str:
    methods = report["methods"]
    has_delta = REFERENCE in methods
    s = report["setup"]
    seeds = s.get("seeds", 1)
    lines = [
        "# Seesaw report",
        "",
        f"`{s['command']}`",
        "",
        f"Base model `{s['model']}`, {s['steps']} optimizer steps per method on the same data, "
        f"{seeds} seed{'s' if seeds > 1 else ''} (mean ± std over seeds), matched budget: {s['budget_rank']} total "
        f"expert rank per adapted layer{budget_note(s)}. Scores: greedy answers on held-out examples (n per task: "
        f"{s['examples_per_task']}), each task's own metric.",
    ]
    if "inputs" in s:
        lines += ["", f"Inputs: {s['inputs']}."]
    if "tuning" in s:
        lines += ["", s["tuning"]]
    lines += [
        "",
        "| method | rank per expert | experts per layer | trainable params | lr | mean score | mean exact match"
        + (" | worst drop vs per-task LoRA |" if has_delta else " |"),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_delta else ""),
    ]
    for row in methods.values():
        drop = f" {row['worst_drop']:.3f} |" if has_delta else ""
        lr = f"{row['lr']:g}" if "lr" in row else "config"
        lines.append(
            f"| {row['label']} | {row['r']} | {row['experts_per_layer']} | {row['trainable_params']:,} | {lr} "
            f"| {row['mean']:.3f} ± {row['mean_std']:.3f} | {row['mean_exact_match']:.3f} |{drop}"
        )
    if "shared_lora" in methods and OURS in methods:
        shared, ours = methods["shared_lora"], methods[OURS]
        lines += [
            "",
            f"LoRA (shared) is one LoRA of rank {shared['r']} with CGC-LoRA's trainable LoRA parameters "
            f"({shared['trainable_params']:,} vs {ours['trainable_params']:,}, the gates aside): "
            'the "a bigger rank instead of experts" row.',
        ]
    if "comparison" in report:
        lines += ["", verdict(report["comparison"])]
    if "gates" in report:
        lines += ["", report["gates"]["summary"], "", "![gate share on own experts per task and block](gates.png)"]
    if any("grid" in row for row in methods.values()):
        lines += ["", "Learning rate of each method, chosen by its mean validation score:", "", _grid_table(report)]
    lines += ["", "Per-task scores (mean ± std over seeds):", "", _task_table(report, "scores", std="scores_std")]
    if has_delta:
        lines += ["Per-task delta vs per-task LoRA (of the means; negative = the task lost to sharing):", ""]
        lines += [_task_table(report, "delta_vs_per_task_lora", signed=True)]
    lines += ["![per-task scores and deltas](seesaw.png)", ""]
    return "\n".join(lines)


def budget_note(setup: dict) -> str:
    asked = setup.get("budget_asked")
    if asked is None or asked == setup["budget_rank"]:
        return ""
    return f" (raised from {asked} so that no expert has rank below {setup['min_rank']})"


def _grid_table(report: dict) -> str:
    rows = [row for row in report["methods"].values() if "grid" in row]
    grid = list(rows[0]["grid"])
    lines = ["| method | " + " | ".join(f"lr {lr}" for lr in grid) + " | chosen |", "|---|" + "---:|" * (len(grid) + 1)]
    for row in rows:
        cells = " | ".join(f"{row['grid'][lr]:.3f}" for lr in grid)
        lines.append(f"| {row['label']} | {cells} | {row['lr']:g} |")
    return "\n".join(lines) + "\n"


def _task_table(report: dict, key: str, signed: bool = False, std: str | None = None) -> str:
    methods = report["methods"]
    head = "| task | metric | " + " | ".join(row["label"] for row in methods.values()) + " |"
    lines = [head, "|---|---|" + "---:|" * len(methods)]
    fmt = "{:+.3f}" if signed else "{:.3f}"
    for task, metric in report["tasks"].items():
        cells = " | ".join(
            fmt.format(row[key][task]) + (f" ± {row[std][task]:.3f}" if std else "") for row in methods.values()
        )
        lines.append(f"| {task} | {metric} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> None:
    """Two panels: each method's per-task score (mean, std bars); each method's per-task delta vs per-task LoRA."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    tasks, methods = list(report["tasks"]), report["methods"]
    compared = {n: r for n, r in methods.items() if "delta_vs_per_task_lora" in r and n != REFERENCE}
    panels = 2 if compared else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(8, 1.1 * len(tasks) + 2), 4 * panels), squeeze=False)
    x = np.arange(len(tasks))
    width = 0.8 / len(methods)
    color = {name: f"C{i}" for i, name in enumerate(methods)}  # one colour per method in both panels
    ax = axes[0][0]
    for i, (name, row) in enumerate(methods.items()):
        offset = (i - (len(methods) - 1) / 2) * width
        heights = [row["scores"][t] for t in tasks]
        errors = [row["scores_std"][t] for t in tasks]
        ax.bar(x + offset, heights, width, yerr=errors, label=row["label"], color=color[name], capsize=2)
    ax.set_ylabel("score")
    ax.set_title("per-task score (mean over seeds, bars: std)")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(x, tasks, rotation=30, ha="right")
    ax.legend(fontsize="small", ncols=len(methods))
    if compared:
        ax = axes[1][0]
        width = 0.8 / len(compared)
        for i, (name, row) in enumerate(compared.items()):
            offset = (i - (len(compared) - 1) / 2) * width
            deltas = [row["delta_vs_per_task_lora"][t] for t in tasks]
            ax.bar(x + offset, deltas, width, label=row["label"], color=color[name])
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("score − per-task LoRA")
        ax.set_title("per-task delta vs per-task LoRA (below 0: the seesaw)")
        ax.set_xticks(x, tasks, rotation=30, ha="right")
        ax.legend(fontsize="small", ncols=len(compared))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path) -> None:
    out = Path(out_dir)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown(report))
    plot(report, out / "seesaw.png")
    if "gates" in report:
        from cgc.analysis.gate_report import plot_heatmap  # noqa: PLC0415 - matplotlib only when there are gates

        plot_heatmap(report["gates"]["own_share"], out / "gates.png")
