"""The seesaw report: per-task scores of several methods side by side, each method's per-task delta against
per-task LoRA (one adapter per task, so no task has to share with another), as report.json, report.md and
seesaw.png.

"Seesaw": training tasks together lifts some and pushes others down. A method's *worst drop* is how far its
worst task falls below per-task LoRA (0 when no task falls), the number the CGC-LoRA paper's design targets.
"""

from __future__ import annotations

import json
from pathlib import Path

REFERENCE = "per_task_lora"
LABELS = {
    "shared_lora": "LoRA (shared)",
    "per_task_lora": "per-task LoRA",
    "moelora": "MOELoRA",
    "cgc_lora": "CGC-LoRA",
}


def build_report(methods: dict[str, dict], setup: dict) -> dict:
    """`methods`: name -> {"eval": eval.json content, "summary": run_summary.json content, "config": {...}}.
    -> the report.json object: per method its scores, mean, delta vs per-task LoRA and worst drop."""
    first = next(iter(methods.values()))["eval"]["tasks"]
    tasks = list(first)
    report = {"setup": setup, "reference": REFERENCE, "tasks": {t: first[t]["metric"] for t in tasks}, "methods": {}}
    reference = methods.get(REFERENCE)
    for name, run in methods.items():
        scores = {t: run["eval"]["tasks"][t]["score"] for t in tasks}
        row = {
            "label": LABELS.get(name, name),
            **run["config"],
            "trainable_params": run["summary"]["trainable_params"],
            "final_loss": run["summary"]["final_loss"],
            "train_tokens_per_s": run["summary"]["tokens_per_s"],
            "scores": scores,
            "exact_match": {t: run["eval"]["tasks"][t]["exact_match"] for t in tasks},
            "mean": sum(scores.values()) / len(scores),
            "mean_exact_match": sum(run["eval"]["tasks"][t]["exact_match"] for t in tasks) / len(tasks),
        }
        if reference is not None:
            delta = {t: scores[t] - reference["eval"]["tasks"][t]["score"] for t in tasks}
            row["delta_vs_per_task_lora"] = delta
            row["worst_drop"] = max(0.0, -min(delta.values()))
        report["methods"][name] = row
    return report


def markdown(report: dict) -> str:
    methods = report["methods"]
    has_delta = REFERENCE in methods
    s = report["setup"]
    lines = [
        "# Seesaw report",
        "",
        f"`{s['command']}`",
        "",
        f"Base model `{s['model']}`, {s['steps']} optimizer steps per method on the same data and sampler seed, "
        f"matched budget: {s['budget_rank']} total expert rank per adapted layer. Scores: greedy answers on "
        f"held-out examples (n per task: {s['examples_per_task']}), each task's own metric.",
        "",
        "| method | rank per expert | experts per layer | trainable params | mean score | mean exact match"
        + (" | worst drop vs per-task LoRA |" if has_delta else " |"),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if has_delta else ""),
    ]
    for row in methods.values():
        drop = f" {row['worst_drop']:.3f} |" if has_delta else ""
        lines.append(
            f"| {row['label']} | {row['r']} | {row['experts_per_layer']} | {row['trainable_params']:,} "
            f"| {row['mean']:.3f} | {row['mean_exact_match']:.3f} |{drop}"
        )
    lines += ["", "Per-task scores:", "", _task_table(report, "scores")]
    if has_delta:
        lines += ["Per-task delta vs per-task LoRA (negative = the task lost to sharing):", ""]
        lines += [_task_table(report, "delta_vs_per_task_lora", signed=True)]
    lines += ["![per-task scores and deltas](seesaw.png)", ""]
    return "\n".join(lines)


def _task_table(report: dict, key: str, signed: bool = False) -> str:
    methods = report["methods"]
    head = "| task | metric | " + " | ".join(row["label"] for row in methods.values()) + " |"
    lines = [head, "|---|---|" + "---:|" * len(methods)]
    fmt = "{:+.3f}" if signed else "{:.3f}"
    for task, metric in report["tasks"].items():
        cells = " | ".join(fmt.format(row[key][task]) for row in methods.values())
        lines.append(f"| {task} | {metric} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | Path) -> None:
    """Two panels: each method's per-task score; each method's per-task delta vs per-task LoRA."""
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
        ax.bar(x + offset, [row["scores"][t] for t in tasks], width, label=row["label"], color=color[name])
    ax.set_ylabel("score")
    ax.set_title("per-task score")
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
