"""recipes/finetune.py with init_from for real: 2 CPU ranks, ZeRO-3 over an NF4 base. A trained run grows by a task in
a trained cluster and by a new cluster; the trained tasks stay bit-identical and only the new parameters train."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cgc
from cgc.models import load_recipe_model
from tests.conftest import ROOT
from tests.recipes.test_finetune import launch

TRAINED = {"words": ["reverse_words", "uppercase"], "numbers": ["add"]}
GROWN = {"words": ["reverse_words", "uppercase", "sort_words"], "numbers": ["add"], "letters": ["first_letter"]}
NEW_TASKS = ["sort_words", "first_letter"]
COMMON = ["train.save_every=0", "eval.max_examples_per_task=2", "train.log_every=1"]


def data_of(tasks: list[str], directory: Path) -> list[str]:
    """train and eval files holding only `tasks`' examples of the demo data -> the two overrides."""
    directory.mkdir(parents=True, exist_ok=True)
    overrides = []
    for split in ("train", "eval"):
        lines = (ROOT / f"recipes/data/demo/{split}.jsonl").read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["task"] in tasks]
        (directory / f"{split}.jsonl").write_text("\n".join(kept) + "\n")
        overrides.append(f"data.{split}_files=[{directory / f'{split}.jsonl'}]")
    return overrides


def clusters(mapping: dict) -> str:
    return "cgc.clusters=" + json.dumps(mapping)


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("growth")
    trained = root / "trained"
    old_data = data_of(sum(TRAINED.values(), []), root / "old")
    launch(trained, clusters(TRAINED), *old_data, "train.max_steps=4", "eval.metrics={reverse_words: rouge_l}", *COMMON)
    grown = root / "grown"
    grow = [clusters(GROWN), f"init_from={trained / 'adapters/cgc'}", *data_of(NEW_TASKS, root / "new"), *COMMON]
    launch(grown, *grow, "train.max_steps=8")
    return trained, grown, grow


def logits(adapter: Path, tasks: list[str]) -> torch.Tensor:
    base, _ = load_recipe_model("tiny-llama", None, "none", "float32", seed=0)
    model = cgc.load_adapter(base, adapter)
    ids = torch.randint(3, 100, (len(tasks), 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_ids=ids, task_ids=tasks).logits


def test_trained_tasks_are_bit_identical_after_growing(runs):
    trained, grown, _ = runs
    old = ["reverse_words", "add", "uppercase", "add"]
    for tasks in (old, ["uppercase"] * 3, ["add"] * 2):
        assert torch.equal(logits(trained / "adapters/cgc", tasks), logits(grown / "adapters/cgc", tasks)), tasks
    for task in sum(TRAINED.values(), []):  # the exports a running server loaded: the same bytes
        assert digest(trained / "adapters/peft" / task) == digest(grown / "adapters/peft" / task), task


def test_only_the_new_clusters_train_and_their_loss_falls(runs):
    trained, grown, _ = runs
    config = cgc.CGCLoraConfig.load(grown / "adapters/cgc")
    assert config.clusters == {**TRAINED, "words+1": ["sort_words"], "letters": ["first_letter"]}
    assert config.tasks[:3] == ["reverse_words", "uppercase", "add"]  # trained ids kept, new tasks appended
    base, _ = load_recipe_model("tiny-llama", None, "none", "float32", seed=0)
    model = cgc.attach(base, config)
    new = sum(p.numel() for c in ("words+1", "letters") for p in model.cluster_parameters(c))
    summary = json.loads((grown / "run_summary.json").read_text())
    assert summary["optimized_params"] == new < summary["trainable_params"]
    records = [json.loads(line) for line in (grown / "metrics.jsonl").read_text().splitlines()]
    for cluster in ("words+1", "letters"):
        losses = [r["loss"] for r in records if r["cluster"] == cluster]
        assert len(losses) >= 2 and losses[-1] < losses[0], (cluster, losses)
    identity = json.loads((grown / "cgc_run.json").read_text())
    assert identity["init_from_path"] == str(trained / "adapters/cgc") and len(identity["init_from"]) == 64
    scored = json.loads((grown / "eval.json").read_text())
    assert set(NEW_TASKS) <= set(scored["tasks"]) and "untrained_tasks" not in scored


def refuse(out: Path, *overrides) -> str:
    command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml", f"output_dir={out}"]
    result = subprocess.run([*command, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "CGC-LoRA on" not in result.stdout  # before any model loads
    return result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ([clusters({"words": ["uppercase", "reverse_words", "sort_words"], "numbers": ["add"]})], "listed as"),
        ([clusters({"words": ["reverse_words", "sort_words"], "numbers": ["add", "uppercase"]})], "'uppercase' is in"),
        ([clusters({"words": [*GROWN["words"]], "letters": ["first_letter"]})], "'numbers'.*is missing"),
        ([clusters(TRAINED), "eval.metrics={}"], "adds no task"),
        (["cgc.r=8"], "cgc.r is 8 but the trained adapter has 4"),
        (["model.quantization=none"], "model.quantization: 'nf4' there, 'none' here"),
        (["cgc.target_modules=[q_proj]"], "cgc.target_modules"),
        (
            ["model.name_or_path=tiny-qwen2"],
            "another base model:\n  - model.name_or_path: 'tiny-llama' there, 'tiny-qwen2' here",
        ),
    ],
)
def test_growing_refuses_what_would_touch_a_trained_task(runs, tmp_path, change, message):
    _, _, grow = runs
    stderr = refuse(tmp_path / "run", *grow, *change)
    assert re.search(message, stderr), stderr[-2000:]


def test_growing_refuses_data_of_trained_tasks_and_a_missing_adapter(runs, tmp_path):
    trained, _, grow = runs
    replay = data_of([*NEW_TASKS, "add"], tmp_path / "replay")
    assert "tasks init_from already trained (['add'])" in refuse(tmp_path / "a", *grow, *replay)
    assert "init_from nowhere: no cgc_config.json in nowhere" in refuse(tmp_path / "b", *grow, "init_from=nowhere")
    assert f"no cgc_config.json in {trained}" in refuse(tmp_path / "c", *grow, f"init_from={trained}")
    inside = refuse(trained, *grow, "overwrite=true")  # would move the adapter it grows from aside
    assert "is inside output_dir" in inside and (trained / "adapters/cgc").is_dir()
