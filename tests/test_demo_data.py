"""The committed demo dataset: what make_demo.py writes, with answers that are right."""

import json
import subprocess
import sys
from pathlib import Path

from cgc.data import check_tasks, load_examples, task_counts
from cgc.task_map import TaskMap

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "data" / "demo"


def test_committed_demo_data_is_what_the_generator_writes(tmp_path):
    subprocess.run([sys.executable, "recipes/data/make_demo.py", "--out", str(tmp_path)], cwd=ROOT, check=True)
    for name in ("train.jsonl", "eval.jsonl", "clusters.json"):
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
