"""The seesaw report's files: report.json, report.md (a table per budget, the intervals, the gates, the grids, the
per-task scores), seesaw.png (per-task scores and deltas), budgets.png (mean score against each task's served rank
and against the trainable parameters) and one gate figure per method whose gate learned (gates.png for
CGC-LoRA, gates_<method>.png for a control)."""

from __future__ import annotations

import json
from pathlib import Path

from cgc.adapter.presets import LABELS
from cgc.analysis.report import BUDGET_TITLES, GIVEN, OURS, REFERENCE, comparison_lines


def markdown(report: dict) -> str:
    s = report["setup"]
    seeds = s.get("seeds", 1)
    lines = [
        "# Seesaw report",
        "",
        f"`{s['command']}`",
        "",
        f"Base model `{s['model']}`, {s['steps']} optimizer steps per method on the same data, "
        f"{seeds} seed{'s' if seeds > 1 else ''} (mean ± std over seeds). Scores: greedy answers on the eval examples "
        f"(n per task: {s['examples_per_task']}), each task's own metric.",
    ]
    for key in ("inputs", "eval_overlap", "tuning", "training_examples"):
        if key in s:
            lines += ["", s[key] if key != "inputs" else f"Inputs: {s[key]}."]
    for match, budget in report["budgets"].items():
        lines += ["", f"## {BUDGET_TITLES.get(match, match)}", "", budget_line(match, s), ""]
        lines += method_table(budget["methods"])
        if match == "trainable" and {"shared_lora", OURS} <= set(budget["methods"]):
            shared, ours = budget["methods"]["shared_lora"], budget["methods"][OURS]
            lines += [
                "",
                f"LoRA (shared) is one LoRA of rank {shared['r']} with CGC-LoRA's trainable LoRA parameters "
                f"({shared['trainable_params']:,} vs {ours['trainable_params']:,}, the gates aside): "
                'the "a bigger rank instead of experts" row.',
            ]
        for line in comparison_lines(budget):
            lines += ["", line]
    lines += ["", "![mean score against served rank and trainable parameters](budgets.png)"]
    for method, gates in report.get("gates", {}).items():
        image = f"![{LABELS[method]}: gate share on own experts per task and block]({gates_png(method)})"
        lines += ["", f"{LABELS[method]} ({gates['budget']} budget). {gates['summary']}", "", image]
    for match, budget in report["budgets"].items():
        if any("grid" in row for row in budget["methods"].values()):
            lines += ["", f"Learning rate of each method ({match} budget), chosen by its mean validation score:", ""]
            lines += [grid_table(budget["methods"])]
    for match, budget in report["budgets"].items():
        methods = budget["methods"]
        lines += ["", f"Per-task scores, {match} budget (mean ± std over seeds):", ""]
        lines += [task_table(report["tasks"], methods, "scores", std="scores_std")]
        if REFERENCE in methods:
            lines += [f"Per-task delta vs per-task LoRA, {match} budget (negative = the task lost to sharing):", ""]
            lines += [task_table(report["tasks"], methods, "delta_vs_per_task_lora", signed=True)]
    lines += ["![per-task scores and deltas](seesaw.png)", ""]
    return "\n".join(lines)


def budget_line(match: str, setup: dict) -> str:
    if match == "served":
        return f"Every task is served at rank {setup['served_rank']} (CGC-LoRA's exported rank)."
    asked = setup.get("budget_asked")
    raised = ""
    if asked is not None and asked != setup["budget_rank"]:
        raised = f" (raised from {asked} so that no expert has rank below {setup['min_rank']})"
    return f"Budget: {setup['budget_rank']} total expert rank per adapted layer{raised}."


def method_table(methods: dict) -> list[str]:
    has_delta, has_held = REFERENCE in methods, any("held_out_mean" in row for row in methods.values())
    head = "| method | clusters | rank per expert | experts per layer | served rank per task | trainable params "
    head += "| exported adapters | lr | mean score |" + (" held-out mean |" if has_held else "")
    head += " mean exact match |" + (" worst drop vs per-task LoRA |" if has_delta else "")
    lines = [head, "|---|" + "---:|" * (9 + has_delta + has_held)]
    for row in methods.values():
        drop = f" {row['worst_drop']:.3f} |" if has_delta else ""
        held = f" {row['held_out_mean']:.3f} ± {row['held_out_mean_std']:.3f} |" if "held_out_mean" in row else ""
        held = held or (" - |" if has_held else "")
        lr = f"{row['lr']:g}" if "lr" in row else "config"
        lr += " (edge)" if row.get("lr_at_edge") else ""
        lr_from = row.get("lr_from")
        lr += " (given)" if lr_from == GIVEN else f" ({lr_from}'s)" if lr_from else ""
        size = f"{row['export_bytes'] / 1e6:.1f} MB" if "export_bytes" in row else "-"
        lines.append(
            f"| {row['label']} | {row.get('clusters', '-')} | {row['r']} | {row['experts_per_layer']} "
            f"| {row.get('served_rank', '-')} | {row['trainable_params']:,} | {size} | {lr} "
            f"| {row['mean']:.3f} ± {row['mean_std']:.3f} |{held} {row['mean_exact_match']:.3f} |{drop}"
        )
    if any(row.get("lr_at_edge") for row in methods.values()):
        lines += [
            "",
            "(edge): the chosen lr is the grid's smallest or largest: the best may lie beyond (widen --lr_grid).",
        ]
    return lines


def grid_table(methods: dict) -> str:
    rows = [row for row in methods.values() if "grid" in row]
    grid = list(rows[0]["grid"])
    lines = ["| method | " + " | ".join(f"lr {lr}" for lr in grid) + " | chosen |", "|---|" + "---:|" * (len(grid) + 1)]
    for row in rows:
        ties = row.get("grid_ties", [])
        cells = " | ".join(f"{row['grid'][lr]:.3f}" + (" ≈" if lr in ties else "") for lr in grid)
        lines.append(f"| {row['label']} | {cells} | {row['lr']:g} |")
    if any(row.get("grid_ties") for row in rows):
        lines += [
            "",
            "≈: validation cannot tell this lr from the chosen one (the paired 95 % interval of their difference over "
            "the same validation examples and grid seeds includes 0): more validation examples per task, or more "
            "--grid_seeds, may.",
        ]
    return "\n".join(lines) + "\n"


def task_table(tasks: dict, methods: dict, key: str, signed: bool = False, std: str | None = None) -> str:
    head = "| task | metric | " + " | ".join(row["label"] for row in methods.values()) + " |"
    lines = [head, "|---|---|" + "---:|" * len(methods)]
    fmt = "{:+.3f}" if signed else "{:.3f}"
    for task, metric in tasks.items():
        cells = " | ".join(
            fmt.format(row[key][task]) + (f" ± {row[std][task]:.3f}" if std else "") for row in methods.values()
        )
        lines.append(f"| {task} | {metric} | {cells} |")
    return "\n".join(lines) + "\n"


def plot_seesaw(tasks: list[str], methods: dict, path: str | Path) -> None:
    """Two panels: each method's per-task score (mean, std bars); each method's per-task delta vs per-task LoRA."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

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
    ax.legend(fontsize="small", ncols=min(4, len(methods)))
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
        ax.legend(fontsize="small", ncols=min(4, len(compared)))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_budgets(budgets: dict, path: str | Path) -> None:
    """Mean score (std bars) of every method under every budget, against its served rank per task (left) and
    against its trainable parameters (right): what each method costs to serve and to train for what it scores."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    names = list(dict.fromkeys(n for budget in budgets.values() for n in budget["methods"]))
    color = {name: f"C{i % 10}" for i, name in enumerate(names)}
    marker = {"trainable": "o", "served": "s"}
    for ax, key, title in (
        (axes[0], "served_rank", "served rank per task"),
        (axes[1], "trainable_params", "trainable parameters"),
    ):
        for match, budget in budgets.items():
            for name, row in budget["methods"].items():
                if key not in row:
                    continue
                ax.errorbar(row[key], row["mean"], yerr=row["mean_std"], fmt=marker.get(match, "^"), color=color[name],
                            capsize=3, label=f"{row['label']} ({match})")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(title + " (log)")
        ax.set_ylabel("mean score")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize="x-small", loc="best")
    fig.suptitle("mean score against cost: circles = matched trainable parameters, squares = matched served rank")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """Every file of the report. -> the files written"""
    out = Path(out_dir)
    written = [out / "report.json", out / "report.md", out / "seesaw.png", out / "budgets.png"]
    written[0].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    written[1].write_text(markdown(report))
    first = next(iter(report["budgets"].values()))["methods"]  # the trainable budget when it was run
    plot_seesaw(list(report["tasks"]), first, written[2])
    plot_budgets(report["budgets"], written[3])
    for method, gates in report.get("gates", {}).items():
        from cgc.analysis.gate_report import plot_heatmap  # noqa: PLC0415 - matplotlib only when there are gates

        written.append(out / gates_png(method))
        plot_heatmap(gates["own_share"], written[-1], LABELS[method])
    return written


def gates_png(method: str) -> str:
    """CGC-LoRA's gate figure keeps the name reports before per-method gates gave it."""
    return "gates.png" if method == OURS else f"gates_{method}.png"
