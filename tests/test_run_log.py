"""StepStats: per-task and per-cluster sums kept by task id, reduced in one collective (here: one process)."""

import pytest
import torch

from cgc.run_log import StepStats
from cgc.task_map import TaskMap

TASK_MAP = TaskMap.from_clusters({"words": ["upper", "reverse"], "numbers": ["add"]})


def test_step_stats_average_per_task_and_per_cluster():
    stats = StepStats(TASK_MAP)
    # micro-batch 1 (words): upper twice, reverse once; per-sample loss sums and target-token counts
    stats.add("words", 2.0, 2, 30.0, torch.tensor([0, 0, 1]), torch.tensor([4.0, 2.0, 9.0]), torch.tensor([2, 2, 3]))
    # micro-batch 2 (numbers)
    stats.add("numbers", 1.0, 2, 10.0, torch.tensor([2]), torch.tensor([5.0]), torch.tensor([5]))
    total = stats.reduce()
    assert total.loss == pytest.approx(1.5) and total.tokens == 40.0
    assert total.task_losses() == pytest.approx({"upper": 1.5, "reverse": 3.0, "add": 1.0})
    assert total.cluster_losses() == pytest.approx({"words": 2.0, "numbers": 1.0})
    assert total.clusters == ["words", "numbers"]
    assert stats.tasks_seen() == ["upper", "reverse", "add"]


def test_tasks_without_examples_are_left_out():
    stats = StepStats(TASK_MAP)
    stats.add("numbers", 0.5, 1, 8.0, torch.tensor([2, 2]), torch.tensor([1.0, 3.0]), torch.tensor([1, 1]))
    total = stats.reduce()
    assert total.task_losses() == {"add": 2.0} and total.cluster_losses() == {"numbers": 0.5}
