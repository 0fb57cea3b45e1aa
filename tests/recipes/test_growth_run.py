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


def adapter_tensors(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(adapter / "adapter_model.safetensors")


def test_extend_shared_trains_a_trained_clusters_shared_experts_with_replay(runs, tmp_path):
    """train.extend_shared on 2 ranks (ZeRO-3, NF4) with replay of `uppercase`: words' shared experts train, its own
    experts and gates and every other cluster stay bit-identical; `add` computes and exports what it did."""
    trained, _, grow = runs
    out = tmp_path / "extended"
    replay = data_of([*NEW_TASKS, "uppercase"], tmp_path / "replay")
    result = launch(out, *grow, *replay, "train.extend_shared=true", "train.max_steps=6")
    assert "every task of those clusters changes, ['reverse_words', 'uppercase'] included" in result.stderr
    before, after = adapter_tensors(trained / "adapters/cgc"), adapter_tensors(out / "adapters/cgc")
    rows = cgc.CGCLoraConfig.load(trained / "adapters/cgc").shared_rows()
    for name, was in before.items():
        now = after[name]
        if ".experts.words." in name:
            own = (slice(rows, None),) if name.endswith("lora_A") else (slice(None), slice(rows, None))
            shared = (slice(None, rows),) if name.endswith("lora_A") else (slice(None), slice(None, rows))
            assert torch.equal(now[own], was[own]) and not torch.equal(now[shared], was[shared]), name
        else:
            assert torch.equal(now, was), name  # words' gates, numbers: frozen
    assert torch.equal(logits(trained / "adapters/cgc", ["add"] * 2), logits(out / "adapters/cgc", ["add"] * 2))
    assert digest(trained / "adapters/peft/add") == digest(out / "adapters/peft/add")
    assert digest(trained / "adapters/peft/uppercase") != digest(out / "adapters/peft/uppercase")
    base, _ = load_recipe_model("tiny-llama", None, "none", "float32", seed=0)
    model = cgc.attach(base, cgc.CGCLoraConfig.load(out / "adapters/cgc"))
    words = sum(p.numel() for n, p in model.trainable_parameters() if ".experts.words." in n)  # A, B: not its gate
    new = sum(p.numel() for c in ("words+1", "letters") for p in model.cluster_parameters(c))
    assert json.loads((out / "run_summary.json").read_text())["optimized_params"] == new + words
    assert json.loads((out / "cgc_run.json").read_text())["train.extend_shared"] is True


def test_extend_shared_refuses_replay_it_cannot_use_and_a_run_without_appended_tasks(runs, tmp_path):
    trained, _, grow = runs
    on = "train.extend_shared=true"
    replay = data_of([*NEW_TASKS, "add"], tmp_path / "replay")  # numbers gets no new task: nothing of it trains
    assert "(['add']) that mix none of the shared experts this run trains" in refuse(tmp_path / "a", *grow, *replay, on)
    new_cluster_only = [clusters({**TRAINED, "letters": ["first_letter"]}), f"init_from={trained / 'adapters/cgc'}"]
    data = data_of(["first_letter"], tmp_path / "letters")
    no_metrics = "eval.metrics={}"  # the config names sort_words, which this map lacks
    assert "appends no task to a trained cluster" in refuse(tmp_path / "b", *new_cluster_only, *data, no_metrics, on)
    assert "train.extend_shared: true needs init_from" in refuse(tmp_path / "c", on)
