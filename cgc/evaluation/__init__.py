"""Per-task evaluation: greedy answers on batches that mix tasks (`generation`), each task's own metric
(`metrics`), the scores and their files eval.json, eval.md, eval_predictions.jsonl (`results`)."""

from cgc.evaluation.generation import generate_answers, greedy_answers, pick_examples
from cgc.evaluation.metrics import MetricSpec, example_scores, task_metrics
from cgc.evaluation.results import evaluate_tasks, markdown_table, score_tasks, write_results

__all__ = [
    "MetricSpec",
    "evaluate_tasks",
    "example_scores",
    "generate_answers",
    "greedy_answers",
    "markdown_table",
    "pick_examples",
    "score_tasks",
    "task_metrics",
    "write_results",
]
