"""Run identity: a rerun never mixes two runs in one output_dir, and a resume refuses a checkpoint whose shapes
or task placement differ (listing each key), while allowing and printing safe changes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgc.recipe.config import load_recipe_config
from cgc.training import run_identity
from tests.conftest import ROOT

TINY = "recipes/configs/tiny_cpu.yaml"
FAST = ["train.max_steps=2", "train.save_every=1", "eval.max_examples_per_task=0"]
SWAPPED = "cgc.clusters={words: [reverse_words, add, sort_words], numbers: [uppercase, subtract, maximum], letters: [first_letter, last_letter, length]}"  # noqa: E501


def recipe(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "recipes/finetune.py", "--config", TINY, f"output_dir={out}", *FAST, *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_differences_split_shape_and_placement_from_safe_settings(tmp_path):
    base = run_identity.fingerprint(load_recipe_config(ROOT / TINY, root=ROOT))
    moved = run_identity.fingerprint(load_recipe_config(ROOT / TINY, [SWAPPED, "train.lr=1e-4"], root=ROOT))
    refused, allowed = run_identity.differences(base, moved)
    assert [line.split(":")[0] for line in refused] == ["cgc.clusters", "cgc.tasks"]
    assert [line.split(":")[0] for line in allowed] == ["train.lr"]
    # the same map in another cluster order gives the tasks other ids: refused, though the mappings compare equal
    reordered = "cgc.clusters={letters: [first_letter, last_letter, length], words: [reverse_words, uppercase, sort_words], numbers: [add, subtract, maximum]}"  # noqa: E501
    refused, _ = run_identity.differences(base, run_identity.fingerprint(load_recipe_config(ROOT / TINY, [reordered])))
    assert [line.split(":")[0] for line in refused] == ["cgc.tasks"]
    before_tasks_key = {k: v for k, v in base.items() if k != "cgc.tasks"}  # an identity written before the key
    assert run_identity.differences(before_tasks_key, base) == ([], [])
    data = tmp_path / "train.jsonl"
    data.write_text((ROOT / "recipes/data/demo/train.jsonl").read_text())
    before = run_identity.describe(data)
    data.write_text(data.read_text().replace("apple", "pear", 1))
    assert run_identity.describe(data)["sha256"] != before["sha256"]  # the data is part of the identity


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("identity") / "run"
    result = recipe(out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "cgc_run.json").read_text())["cgc.r"] == 4
    assert (out / "checkpoints" / "step_2" / "cgc_run.json").is_file()
    return out


def test_a_rerun_into_a_directory_holding_a_run_is_refused_or_moves_it_aside(first_run, tmp_path):
    refused = recipe(first_run)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "holds another run" in refused.stderr and "resume=latest" in refused.stderr
    assert "overwrite=true" in refused.stderr and "Traceback" not in refused.stderr
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(first_run), str(copy)], check=True)
    moved = recipe(copy, "overwrite=true")
    assert moved.returncode == 0, moved.stderr[-2000:]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "metrics.jsonl").is_file()  # the old run, kept whole
    assert (aside[0] / "checkpoints" / "step_2" / "cgc_complete.json").is_file()
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2  # the new run alone


@pytest.mark.parametrize(
    "change, key",
    [(SWAPPED, "cgc.clusters"), ("cgc.r=2", "cgc.r"), ("model.quantization=none", "model.quantization")],
    ids=["task-moved-between-clusters", "rank", "quantization"],
)
def test_resume_refuses_a_checkpoint_of_another_shape_or_placement(first_run, change, key):
    result = recipe(first_run, "resume=latest", "train.max_steps=3", change)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"  - {key}:" in result.stderr and "cannot resume from" in result.stderr
    assert "Traceback" not in result.stderr


def test_resume_allows_and_prints_safe_changes(first_run, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(first_run), str(copy)], check=True)
    result = recipe(copy, "resume=latest", "train.max_steps=3", "train.lr=1e-3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming with a changed setting (allowed): train.lr: 0.003 -> 0.001" in result.stdout
    assert "resumed from" in result.stdout and "step_2" in result.stdout
