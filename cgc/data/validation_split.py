"""A validation split carved from the training data, for choosing hyperparameters without the test set.

Per task, `per_task` distinct inputs are drawn (seeded) from the training examples whose (task, input) does
not occur in the eval set; every training example with one of those (task, input) pairs leaves training. So the
three splits share no example: no validation prompt was trained on, and none is an eval prompt.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from cgc.data.loading import DataError


def carve_validation(
    train: list[dict], evaluation: list[dict], per_task: int, seed: int
) -> tuple[list[dict], list[dict]]:
    """-> (train without the validation examples, validation); both keep the order of `train`."""
    held_out = example_keys(evaluation)
    candidates: dict[str, list[str]] = {}
    for row in train:
        key = (row["task"], row["input"])
        inputs = candidates.setdefault(row["task"], [])
        if key not in held_out and row["input"] not in inputs:
            inputs.append(row["input"])
    rng = random.Random(seed)
    chosen = set()
    for task, inputs in candidates.items():
        chosen |= {(task, text) for text in rng.sample(inputs, min(per_task, len(inputs)))}
    rest, validation, seen = [], [], set()
    for row in train:
        key = (row["task"], row["input"])
        if key not in chosen:
            rest.append(row)
        elif key not in seen:  # one validation example per input: a repeated input would count twice
            seen.add(key)
            validation.append(row)
    return rest, validation


def example_keys(rows: Iterable[dict]) -> set[tuple[str, str]]:
    """The (task, input) of each example: what makes two examples the same one across splits (the target does not:
    a prompt trained on is not held out whatever its answer)."""
    return {(row["task"], row["input"]) for row in rows}


def count_shared(pairs: Iterable[tuple[str, str]], keys: set[tuple[str, str]]) -> dict[str, int]:
    """Per task (sorted), how many of `pairs` (one (task, input) per example, repeats counted) `keys` holds; tasks
    with none are left out. E.g. the eval examples that are training examples."""
    return dict(sorted(Counter(task for task, text in pairs if (task, text) in keys).items()))


def check_disjoint(validation: list[dict], evaluation: list[dict], train: list[dict]) -> None:
    """A validation set given by the user shares no (task, input) with the eval or training examples: tuning on eval
    examples would be tuning on the test set; on training examples, scoring what was trained. Raises DataError."""
    keys = example_keys(validation)
    for name, rows in (("eval", evaluation), ("training", train)):
        shared = keys & example_keys(rows)
        if shared:
            example = sorted(shared)[0]
            raise DataError(
                f"--validation_files: {len(shared)} examples are also in the {name} files (e.g. task {example[0]!r}, "
                f"input {example[1]!r}); the validation examples must be neither trained on nor evaluated"
            )


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Generic-format examples (task, input, target), one JSON object a line. -> the file's absolute path"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in ("task", "input", "target")}, ensure_ascii=False) + "\n")
    return path.resolve()
