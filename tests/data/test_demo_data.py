"""The committed demo dataset: what make_demo.py writes, with answers that are right."""

import json
import subprocess
import sys

from cgc.adapter.task_map import TaskMap
from cgc.data import check_tasks, load_examples, task_counts
from tests.conftest import ROOT

DEMO = ROOT / "recipes" / "data" / "demo"


def test_committed_demo_data_is_what_the_generator_writes(tmp_path):
    subprocess.run([sys.executable, "recipes/data/make_demo.py", "--out", str(tmp_path)], cwd=ROOT, check=True)
    for name in ("train.jsonl", "eval.jsonl", "instruct_train.jsonl", "instruct_eval.jsonl", "clusters.json"):
        assert (tmp_path / name).read_text() == (DEMO / name).read_text(), name


def test_demo_data_has_three_clusters_nine_tasks_and_correct_answers():
    sys.path.insert(0, str(DEMO.parent))
    from make_demo import answer  # noqa: PLC0415 - the generator's own scorer

    clusters = json.loads((DEMO / "clusters.json").read_text())
    assert len(clusters) >= 3 and sum(len(t) for t in clusters.values()) >= 6
    train, evaluation = load_examples(DEMO / "train.jsonl"), load_examples(DEMO / "eval.jsonl")
    for split in (train, evaluation):
        check_tasks(split, TaskMap.from_clusters(clusters))
        assert set(task_counts(split)) == {t for ts in clusters.values() for t in ts}
    assert answer("reverse_words", "apple river stone") == "stone river apple"
    assert answer("subtract", "12 7") == "5" and answer("length", "tiger") == "5"
    for row in evaluation:
        assert row["target"] == answer(row["task"], row["input"])
    # Tasks of a cluster share inputs' form but want different outputs: the seesaw case.
    words = [r for r in train if r["task"] in clusters["words"]]
    assert all(len(r["input"].split()) == 3 for r in words)
    train_inputs = {(r["task"], r["input"]) for r in train if r["task"] not in clusters["letters"]}
    assert not train_inputs & {(r["task"], r["input"]) for r in evaluation}  # held out


def test_the_instruction_variant_is_the_same_examples_with_the_task_named_in_every_prompt():
    for split in ("train", "eval"):
        hidden = [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text().splitlines()]
        named = [json.loads(line) for line in (DEMO / f"instruct_{split}.jsonl").read_text().splitlines()]
        assert [(r["task"], r["target"]) for r in hidden] == [(r["task"], r["target"]) for r in named]
        assert all(n["input"].endswith(": " + h["input"]) for h, n in zip(hidden, named, strict=True))
        # The input alone tells the task: no prompt is shared by two tasks, where the hidden variant shares many.
        assert not inputs_shared_by_tasks(named) and inputs_shared_by_tasks(hidden)


def inputs_shared_by_tasks(rows: list[dict]) -> set[str]:
    tasks_of: dict[str, set[str]] = {}
    for row in rows:
        tasks_of.setdefault(row["input"], set()).add(row["task"])
    return {text for text, tasks in tasks_of.items() if len(tasks) > 1}
