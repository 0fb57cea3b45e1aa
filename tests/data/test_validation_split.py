"""The validation split compare.py tunes learning rates on: disjoint from training and from eval, by example."""

import json

from cgc.data import load_examples
from cgc.data.validation_split import carve_validation, count_shared, example_keys, write_jsonl
from tests.conftest import ROOT

DEMO = ROOT / "recipes" / "data" / "demo"


keys = example_keys


def test_the_demo_split_is_disjoint_from_training_and_eval_and_seeded(tmp_path):
    train = list(load_examples(DEMO / "train.jsonl"))
    evaluation = list(load_examples(DEMO / "eval.jsonl"))
    rest, validation = carve_validation(train, evaluation, per_task=32, seed=0)
    assert not keys(validation) & keys(rest) and not keys(validation) & keys(evaluation)
    assert len(keys(validation)) == len(validation)  # no example twice
    assert len(rest) + sum(1 for r in train if (r["task"], r["input"]) in keys(validation)) == len(train)
    per_task = {}
    for row in validation:
        per_task[row["task"]] = per_task.get(row["task"], 0) + 1
    assert set(per_task) == {r["task"] for r in train}
    # Words and numbers have many unseen inputs; a letters task has only the words eval did not draw.
    assert per_task["reverse_words"] == per_task["add"] == 32 and 0 < per_task["first_letter"] <= 32
    assert carve_validation(train, evaluation, 32, seed=0) == (rest, validation)
    assert keys(carve_validation(train, evaluation, 32, seed=1)[1]) != keys(validation)
    write_jsonl(tmp_path / "v.jsonl", validation)
    assert [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()] == [
        {k: r[k] for k in ("task", "input", "target")} for r in validation
    ]


def test_a_repeated_training_input_leaves_training_whole():
    train = [{"task": "t", "input": x, "target": x.upper()} for x in "aabbbc"]
    evaluation = [{"task": "t", "input": "c", "target": "C"}]
    rest, validation = carve_validation(train, evaluation, per_task=1, seed=0)
    (picked,) = keys(validation)
    assert picked in {("t", "a"), ("t", "b")}  # never the eval input
    assert picked not in keys(rest) and len(rest) == 6 - sum(1 for x in "aabbbc" if x == picked[1])


def test_the_demo_eval_examples_that_training_holds_are_counted_per_task():
    """The demo's letters tasks draw every input from one 39-word list: all their eval examples are training examples
    (data.allow_eval_overlap); no other task's are. The count is what the recipe's check and the report both give."""
    train = list(load_examples(DEMO / "instruct_train.jsonl"))
    evaluation = list(load_examples(DEMO / "instruct_eval.jsonl"))
    shared = count_shared(((r["task"], r["input"]) for r in evaluation), example_keys(train))
    letters = ["first_letter", "last_letter", "length"]
    assert list(shared) == letters  # sorted, and only the tasks that have any
    assert shared == {task: sum(r["task"] == task for r in evaluation) for task in letters}
    repeated = [("a", "x"), ("a", "x"), ("b", "x"), ("a", "y")]
    assert count_shared(repeated, {("a", "x"), ("b", "y")}) == {"a": 2}  # repeats count; (b, x) is not (b, y)
