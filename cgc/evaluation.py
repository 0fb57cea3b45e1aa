"""Per-task evaluation: greedy generation on mixed-task batches (sharded over ranks when a process group
exists), each task scored with its own metric, written as eval.json, eval.md and eval_predictions.jsonl."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from cgc.distributed import gather_objects
from cgc.generation import greedy_answers
from cgc.metrics import MetricSpec, exact_match
from cgc.model import CGCModel
from cgc.task_map import TaskMap


def pick_examples(rows, max_per_task: int, tasks: list[str]) -> list[dict]:
    """The first `max_per_task` examples of each task, interleaved task by task so that every
    generation batch mixes tasks (and clusters), as serving traffic would."""
    per_task: dict[str, list[dict]] = {t: [] for t in tasks}
    for row in rows:
        kept = per_task.setdefault(row["task"], [])
        if len(kept) < max_per_task:
            kept.append(dict(row))
    queues = [kept for kept in per_task.values() if kept]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


@torch.no_grad()
def generate_answers(
    model: CGCModel,
    tokenizer,
    examples: list[dict],
    batch_size: int,
    max_new_tokens: int,
    system_prompt: str | None = None,
    zero3: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[str] | None:
    """One greedy answer per example, in order. With a process group each rank answers a slice and the answers
    are gathered; under ZeRO-3 every rank runs the same number of (synced) generate calls.

    `should_stop` is asked before each batch (on every rank: it must give every rank the same answer); when it
    says True, generation stops there and None is returned."""
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    model.eval()
    mine = list(range(rank, len(examples), world))
    batches = math.ceil(math.ceil(len(examples) / world) / batch_size)
    answered: list[tuple[int, str]] = []
    for b in tqdm(range(batches), desc="eval", unit="batch", disable=rank != 0):
        if should_stop is not None and should_stop():
            return None
        index = mine[b * batch_size : (b + 1) * batch_size]
        chunk = [examples[i] for i in index] or examples[:1]  # a rank with nothing left repeats one, unused
        answers = greedy_answers(model, tokenizer, chunk, max_new_tokens, system_prompt, synced_gpus=zero3)
        answered += list(zip(index, answers[: len(index)], strict=True))  # drop the repeat's answer
    if world > 1:
        answered = [pair for part in gather_objects(answered) for pair in part]
    result = [""] * len(examples)
    for i, answer in answered:
        result[i] = answer
    return result


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
    (out / "eval.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (out / "eval.md").write_text(markdown_table(results))
    with open(out / "eval_predictions.jsonl", "w") as f:
        for ex, answer in zip(examples, answers, strict=True):
            row = {"task": ex["task"], "input": ex["input"], "target": ex["target"], "prediction": answer}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
