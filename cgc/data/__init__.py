"""Multi-task data: files to {task, input, target} examples (`loading`), tokenisation with the loss on targets and
the padding collator (`tokenization`), the cluster-aware distributed batch sampler (`sampler`), and a validation
split carved from training (`validation_split`)."""

from cgc.data.loading import (
    FORMATS,
    DataError,
    check_tasks,
    detect_format,
    load_examples,
    load_task_examples,
    task_counts,
)
from cgc.data.sampler import ClusterAwareBatchSampler
from cgc.data.tokenization import MultiTaskCollator, TokenizationReport, tokenize_dataset

__all__ = [
    "FORMATS",
    "ClusterAwareBatchSampler",
    "DataError",
    "MultiTaskCollator",
    "TokenizationReport",
    "check_tasks",
    "detect_format",
    "load_examples",
    "load_task_examples",
    "task_counts",
    "tokenize_dataset",
]
