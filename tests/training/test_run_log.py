"""StepStats: per-task and per-cluster sums kept by task id, reduced in one collective (here: one process)."""

import pytest
import torch

from cgc.adapter.task_map import TaskMap
from cgc.training.run_log import StepStats

TASK_MAP = TaskMap.from_clusters({"words": ["upper", "reverse"], "numbers": ["add"]})


def test_step_stats_average_over_target_tokens_per_step_task_and_cluster():
    stats = StepStats(TASK_MAP)
    # micro-batch 1 (words): upper twice, reverse once; per-sample loss sums and target-token counts
    stats.add("words", 30.0, 40.0, torch.tensor([0, 0, 1]), torch.tensor([4.0, 2.0, 9.0]), torch.tensor([2, 2, 3]))
    # micro-batch 2 (numbers)
    stats.add("numbers", 10.0, 10.0, torch.tensor([2]), torch.tensor([5.0]), torch.tensor([5]))
    total = stats.reduce()
    assert total.loss == pytest.approx(20.0 / 12) and total.tokens == 40.0
    assert total.padding_fraction == pytest.approx(1 - 40 / 50)
    assert total.task_losses() == pytest.approx({"upper": 1.5, "reverse": 3.0, "add": 1.0})
    assert total.cluster_losses() == pytest.approx({"words": 15.0 / 7, "numbers": 1.0})
    assert total.clusters == ["words", "numbers"]
    assert stats.tasks_seen() == ["upper", "reverse", "add"]


def test_tasks_without_examples_are_left_out():
    stats = StepStats(TASK_MAP)
    stats.add("numbers", 8.0, 8.0, torch.tensor([2, 2]), torch.tensor([1.0, 3.0]), torch.tensor([1, 1]))
    total = stats.reduce()
    assert total.task_losses() == {"add": 2.0} and total.cluster_losses() == {"numbers": 2.0}
    assert total.padding_fraction == 0.0
