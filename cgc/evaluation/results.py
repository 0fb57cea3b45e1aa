"""Per-task results of an evaluation: each task scored with its own metric, written as eval.json, eval.md and
eval_predictions.jsonl (the answers come from cgc.evaluation.generation)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from cgc.adapter.model import CGCModel
from cgc.adapter.task_map import TaskMap
from cgc.evaluation.generation import generate_answers, pick_examples
from cgc.evaluation.metrics import MetricSpec, exact_match
from cgc.training.run_dir import EVAL_JSON, EVAL_MD, EVAL_PREDICTIONS


def evaluate_tasks(
    model: CGCModel,
    tokenizer,
    rows,
    metrics: dict[str, MetricSpec],
    max_per_task: int,
    batch_size: int,
    max_new_tokens: int,
    system_prompt: str | None = None,
    zero3: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict, list[dict], list[str]] | None:
    """Up to `max_per_task` examples of each task from `rows`, answered greedily (sharded over ranks when a process
    group exists; see generate_answers) and scored per task. -> (results, examples, answers), or None when
    `should_stop` stopped the generation."""
    examples = pick_examples(rows, max_per_task, model.tasks)
    answers = generate_answers(
        model, tokenizer, examples, batch_size, max_new_tokens, system_prompt, zero3, should_stop
    )
    if answers is None:
        return None
    return score_tasks(examples, answers, metrics, model.task_map), examples, answers


def score_tasks(examples: list[dict], answers: list[str], metrics: dict[str, MetricSpec], task_map: TaskMap) -> dict:
    """-> {"tasks": {task: {cluster, metric, score, exact_match, n}}, "mean", "mean_exact_match"}; tasks in the
    order of `metrics` (task-id order), those without examples left out."""
    tasks = {}
    for task, spec in metrics.items():
        pairs = [(a, ex["target"]) for ex, a in zip(examples, answers, strict=True) if ex["task"] == task]
        if not pairs:
            continue
        predictions, references = map(list, zip(*pairs, strict=True))
        tasks[task] = {
            "cluster": task_map.cluster_of(task),
            "metric": spec.name,
            "score": spec(predictions, references),
            "exact_match": exact_match(predictions, references),
            "n": len(pairs),
        }
    mean = sum(r["score"] for r in tasks.values()) / max(len(tasks), 1)
    mean_em = sum(r["exact_match"] for r in tasks.values()) / max(len(tasks), 1)
    return {"tasks": tasks, "mean": mean, "mean_exact_match": mean_em}


def markdown_table(results: dict) -> str:
    lines = ["| task | cluster | metric | score | exact match | n |", "|---|---|---|---:|---:|---:|"]
    for task, r in results["tasks"].items():
        lines.append(
            f"| {task} | {r['cluster']} | {r['metric']} | {r['score']:.3f} | {r['exact_match']:.3f} | {r['n']} |"
        )
    lines.append(f"| **mean** | | | **{results['mean']:.3f}** | {results['mean_exact_match']:.3f} | |")
    if results.get("untrained_tasks"):
        lines.append(f"\nScored without any training data (in no training file): {results['untrained_tasks']}")
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, results: dict, examples: list[dict], answers: list[str]) -> None:
    """eval.json (scores), eval.md (the same as a Markdown table), eval_predictions.jsonl (every answer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / EVAL_JSON).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / EVAL_MD).write_text(markdown_table(results))
    with open(out / EVAL_PREDICTIONS, "w") as f:
        for ex, answer in zip(examples, answers, strict=True):
            row = {"task": ex["task"], "input": ex["input"], "target": ex["target"], "prediction": answer}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
