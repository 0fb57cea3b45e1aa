"""cgc.cluster_tasks: task affinity from LoRA gradients, agglomeration, and the CLI."""

import json
import random
import string
import subprocess
import sys

import pytest
import torch
import yaml

from cgc.analysis.clustering import agglomerate, cluster_tasks, to_yaml
from cgc.models.tiny import char_tokenizer, tiny_model
from tests.conftest import ROOT


def two_families(seed=0, n=24):
    """Letter tasks and digit tasks: the two families share nothing (inputs, outputs)."""
    rng = random.Random(seed)

    def word(alphabet):
        return "".join(rng.choice(alphabet) for _ in range(6))

    letters = [word(string.ascii_lowercase) for _ in range(2 * n)]
    digits = [word(string.digits) for _ in range(2 * n)]
    return {
        "copy_digits": [{"input": s, "target": s} for s in digits[:n]],
        "copy_letters": [{"input": s, "target": s} for s in letters[:n]],
        "sort_digits": [{"input": s, "target": "".join(sorted(s))} for s in digits[n:]],
        "reverse_letters": [{"input": s, "target": s[::-1]} for s in letters[n:]],
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_cluster_tasks_separates_two_obviously_different_families(seed):
    clusters, affinity = cluster_tasks(
        tiny_model(seed=seed), char_tokenizer(), two_families(seed), num_clusters=2, seed=seed
    )
    groups = sorted(sorted(tasks) for tasks in clusters.values())
    assert groups == [["copy_digits", "sort_digits"], ["copy_letters", "reverse_letters"]]
    within = min(affinity["copy_letters"]["reverse_letters"], affinity["copy_digits"]["sort_digits"])
    across = max(affinity[a][b] for a in ("copy_letters", "reverse_letters") for b in ("copy_digits", "sort_digits"))
    assert within > across + 0.3


def test_agglomerate_by_count_and_by_threshold():
    tasks = ["a", "b", "c", "d"]
    similarity = torch.tensor([[1.0, 0.9, 0.1, 0.0], [0.9, 1.0, 0.2, 0.1], [0.1, 0.2, 1.0, 0.6], [0.0, 0.1, 0.6, 1.0]])
    assert agglomerate(tasks, similarity, num_clusters=2) == {"cluster0": ["a", "b"], "cluster1": ["c", "d"]}
    assert agglomerate(tasks, similarity, threshold=0.7) == {
        "cluster0": ["a", "b"],
        "cluster1": ["c"],
        "cluster2": ["d"],
    }
    assert agglomerate(tasks, similarity, num_clusters=1) == {"cluster0": ["a", "b", "c", "d"]}
    with pytest.raises(ValueError, match="num_clusters must be in"):
        agglomerate(tasks, similarity, num_clusters=5)


def test_the_default_splits_only_conflicting_tasks():
    """Orthogonal gradients (cosine ~ 0) share a cluster by default (b and c, -0.01 apart, too: average linkage); a
    task that conflicts with the others on average stays apart: each extra cluster costs its experts a share of the
    steps, so only conflict is worth a split."""
    tasks = ["a", "b", "c", "d"]
    similarity = torch.tensor(
        [[1.0, 0.02, 0.05, -0.3], [0.02, 1.0, -0.01, -0.4], [0.05, -0.01, 1.0, -0.2], [-0.3, -0.4, -0.2, 1.0]]
    )
    assert agglomerate(tasks, similarity) == {"cluster0": ["a", "b", "c"], "cluster1": ["d"]}


def test_the_yaml_shows_the_affinity_and_the_cost_of_a_split():
    affinity = {"a": {"a": 1.0, "b": -0.25}, "b": {"a": -0.25, "b": 1.0}}
    text = to_yaml({"cluster0": ["a"], "cluster1": ["b"]}, affinity)
    assert yaml.safe_load(text) == {"clusters": {"cluster0": ["a"], "cluster1": ["b"]}}
    rows = [line for line in text.splitlines() if line.startswith("#  ")]
    assert [row.split()[2:] for row in rows[-2:]] == [["a", "1.00", "-0.25"], ["b", "-0.25", "1.00"]]
    assert "(1/2 with 2 clusters of as many tasks)" in text
    assert "--methods cgc_lora,cgc_one_cluster" in text  # how to measure the split against one cluster
    assert "cgc_one_cluster" not in to_yaml({"cluster0": ["a", "b"]}, affinity)  # one cluster: nothing to compare


def test_cli_prints_a_cluster_map_as_yaml(tmp_path):
    data = tmp_path / "tasks.jsonl"
    with open(data, "w") as f:
        for task, rows in two_families().items():
            for row in rows:
                f.write(json.dumps({"task": task, **row}) + "\n")
    cmd = [sys.executable, "-m", "cgc", "cluster", "--model", "tiny-llama", "--data", str(data), "--num-clusters", "2"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    proposed = yaml.safe_load(result.stdout)
    assert sorted(sorted(t) for t in proposed["clusters"].values()) == [
        ["copy_digits", "sort_digits"],
        ["copy_letters", "reverse_letters"],
    ]
    assert "mean within-cluster affinity" in result.stdout and "task gradient affinity" in result.stdout


def test_the_cli_default_is_the_library_default():
    import argparse

    from cgc.analysis.clustering import DEFAULT_THRESHOLD
    from cgc.cli import add_cluster_arguments

    parser = argparse.ArgumentParser()
    add_cluster_arguments(parser)
    assert parser.parse_args(["--model", "m", "--data", "f"]).threshold == DEFAULT_THRESHOLD == 0.0
