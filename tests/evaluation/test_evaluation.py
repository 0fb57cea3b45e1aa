"""cgc.evaluation on a tiny model: example picking, ordered answers from sharded generation, scoring."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cgc
from cgc.adapter.task_map import TaskMap
from cgc.evaluation import generate_answers, markdown_table, pick_examples, score_tasks
from cgc.evaluation.metrics import MetricSpec
from cgc.models.tiny import char_tokenizer, tiny_model
from tests.conftest import randomize_adapter

CLUSTERS = {"a": ["t0", "t1"], "b": ["t2"]}


def test_pick_examples_caps_each_task_and_interleaves_tasks():
    rows = [{"task": t, "input": f"{t}-{i}", "target": "x"} for t in ("t0", "t1", "t2") for i in range(3)]
    picked = pick_examples(rows, 2, ["t0", "t1", "t2"])
    assert [r["input"] for r in picked] == ["t0-0", "t1-0", "t2-0", "t0-1", "t1-1", "t2-1"]
    assert pick_examples(rows[:1], 5, ["t0", "t1"]) == [rows[0]]


EXAMPLES = [{"task": f"t{i % 3}", "input": f"{i} {i + 1}", "target": "x"} for i in range(5)]


def seeded_model() -> cgc.CGCModel:
    config = cgc.CGCLoraConfig(clusters=CLUSTERS, r=2, target_modules=["q_proj", "v_proj"])
    model = cgc.attach(tiny_model("tiny-llama", hidden_size=32, seed=0), config)
    randomize_adapter(model)
    return model


def answer_on_rank(rank: int, rendezvous: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    # 5 examples, batch 1: rank 0 answers 3, rank 1 answers 2 and repeats one in its third (empty) batch
    answers = generate_answers(seeded_model(), char_tokenizer(), EXAMPLES, batch_size=1, max_new_tokens=4)
    torch.save(answers, f"{out}.{rank}")
    dist.destroy_process_group()


def test_answers_come_back_in_order_from_batches_and_from_two_ranks(tmp_path):
    model, tokenizer = seeded_model(), char_tokenizer()
    batched = generate_answers(model, tokenizer, EXAMPLES, batch_size=3, max_new_tokens=4)
    # one by one gives the same answers: left padding and mixed tasks in a batch change nothing
    one_by_one = [generate_answers(model, tokenizer, [ex], batch_size=1, max_new_tokens=4)[0] for ex in EXAMPLES]
    assert batched == one_by_one and len(set(batched)) > 1
    out = str(tmp_path / "answers")
    mp.spawn(answer_on_rank, args=(str(tmp_path / "rendezvous"), out), nprocs=2)
    assert torch.load(f"{out}.0") == torch.load(f"{out}.1") == batched  # every rank gets all answers, in order


def test_score_tasks_uses_each_tasks_metric_and_skips_tasks_without_examples():
    examples = [
        {"task": "t0", "target": "a b c"},
        {"task": "t0", "target": "x"},
        {"task": "t1", "target": "yes"},
    ]
    metrics = {"t0": MetricSpec("rouge_l"), "t1": MetricSpec("exact_match"), "t2": MetricSpec("exact_match")}
    task_map = TaskMap.from_clusters({"a": ["t0", "t1"], "b": ["t2"]})
    results = score_tasks(examples, ["a b c", "", "yes"], metrics, task_map)
    assert list(results["tasks"]) == ["t0", "t1"]
    assert results["tasks"]["t0"] == {"cluster": "a", "metric": "rouge_l", "score": 0.5, "exact_match": 0.5, "n": 2}
    assert results["mean"] == pytest.approx(0.75) and results["mean_exact_match"] == pytest.approx(0.75)
    assert "| t0 | a | rouge_l | 0.500 | 0.500 | 2 |" in markdown_table(results)
