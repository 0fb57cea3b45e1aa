"""The validation split compare.py tunes learning rates on: disjoint from training and from eval, by example."""

import json

from cgc.data import load_examples
from cgc.data.validation_split import carve_validation, write_jsonl
from tests.conftest import ROOT

DEMO = ROOT / "recipes" / "data" / "demo"


def keys(rows):
    return {(r["task"], r["input"]) for r in rows}


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
