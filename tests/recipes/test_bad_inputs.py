"""Bad inputs the recipe checks before any model loads: each ends with exit code 2 and one message naming the
file (and line) or key, never a traceback."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cgc.training import deepspeed_ops as ops
from tests.conftest import ROOT

GOOD = json.dumps({"task": "add", "input": "1 2", "target": "3"})


def write_inputs(tmp: Path) -> None:
    (tmp / "empty.jsonl").write_text("\n  \n")
    (tmp / "latin1.jsonl").write_bytes((GOOD + "\n").encode() + b'{"task": "add", "input": "caf\xe9", "target": "1"}\n')
    (tmp / "broken.json").write_text('{"zero_optimization": {"stage": 2},\n}\n')
    (tmp / "typo.json").write_text('{"zero_optimisation": {"stage": 3}}\n')
    (tmp / "zero_typo.json").write_text('{"zero_optimization": {"stage": 3, "overlap_com": true}}\n')
    (tmp / "a_file").write_text("")
    (tmp / "not_a_dataset").mkdir()
    (tmp / "not_a_dataset" / "notes.txt").write_text("x\n")
    tiny = (ROOT / "recipes/configs/tiny_cpu.yaml").read_text()
    (tmp / "tab.yaml").write_text(tiny.replace("  name_or_path:", "\tname_or_path:", 1))
    (tmp / "twice.yaml").write_text(tiny + "seed: 1\n")
    (tmp / "latin1.yaml").write_bytes(b"# caf\xe9\n" + tiny.encode())
    demo = (ROOT / "recipes/data/demo/train.jsonl").read_text().splitlines()
    (tmp / "no_length.jsonl").write_text("\n".join(r for r in demo if json.loads(r)["task"] != "length") + "\n")


CASES = {
    "empty-train-file": (["data.train_files=[{tmp}/empty.jsonl]"], "{tmp}/empty.jsonl: the file is empty"),
    "not-utf8": (["data.train_files=[{tmp}/latin1.jsonl]"], "{tmp}/latin1.jsonl:2: not UTF-8 text (byte 0xe9"),
    "malformed-ds-json": (["deepspeed.config={tmp}/broken.json"], "{tmp}/broken.json:2: malformed JSON"),
    "ds-json-typo": (["deepspeed.config={tmp}/typo.json"], "did you mean 'zero_optimization'?"),
    "ds-zero-key-typo": (["deepspeed.config={tmp}/zero_typo.json"], "zero_optimization.overlap_com: Extra inputs"),
    "unwritable-output-dir": (["output_dir={tmp}/a_file/run"], "output_dir {tmp}/a_file/run is not writable"),
    "config-with-a-tab": (["--config", "{tmp}/tab.yaml"], "{tmp}/tab.yaml:12:1: not valid YAML: found character '\\t'"),
    "config-key-twice": (["--config", "{tmp}/twice.yaml"], "key 'seed' is given twice (first on line 8)"),
    "config-not-utf8": (["--config", "{tmp}/latin1.yaml"], "{tmp}/latin1.yaml:1: not UTF-8 text (byte 0xe9)"),
    "train-dir-not-a-dataset": (
        ["data.train_files=[{tmp}/not_a_dataset]"],
        "{tmp}/not_a_dataset: a directory, but not",
    ),
    "negative-seed": (["seed=-1"], "seed must be in [0, 2**32), got -1"),
    "zero-collective-timeout": (["train.collective_timeout_s=0"], "train.collective_timeout_s must be a finite number"),
    "extend-shared-alone": (["train.extend_shared=true"], "train.extend_shared: true needs init_from"),
    "warmup-past-the-end": (["train.max_steps=3", "train.warmup_steps=5"], "train.warmup_steps=5 is more than train"),
    "infinite-lr": (["train.lr=.inf"], "train.lr must be a finite number > 0, got inf"),
    "eval-overlaps-train": (
        ["data.allow_eval_overlap=false"],
        "data.eval_files: 150 of 450 eval examples have a training example's input ({{'first_letter': 50,",
    ),
    "task-without-data": (
        ["data.train_files=[{tmp}/no_length.jsonl]"],
        "tasks ['length'] of cgc.clusters have no examples in data.train_files: their experts would stay",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_before_the_model_loads_with_one_message(tmp_path, case):
    write_inputs(tmp_path)
    overrides, message = CASES[case]
    command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml"]
    command += [f"output_dir={tmp_path / 'out'}", *(o.format(tmp=tmp_path) for o in overrides)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Loading weights" not in result.stderr and "resolved config" not in result.stdout  # nothing started


def test_resume_latest_with_nothing_to_resume_says_so(tmp_path):
    command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml"]
    command += [f"output_dir={tmp_path / 'out'}", "resume=latest", "train.max_steps=1", "eval.max_examples_per_task=0"]
    command += ["train.warmup_steps=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resume=latest: no complete checkpoint in" in result.stdout and "starting at step 0" in result.stdout


def test_a_step_larger_than_every_cluster_is_refused_before_loading(tmp_path):
    command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml"]
    command += [f"output_dir={tmp_path / 'out'}", "train.micro_batch_size=5000"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "train.micro_batch_size=5000 x 1 ranks needs 5000 examples of one cluster per step" in result.stderr
    assert "'words': 900" in result.stderr and "Loading weights" not in result.stderr


def test_silent_data_loss_is_said(tmp_path):
    # add: some empty targets; uppercase: targets too long for max_length (all dropped); length: no training data
    rows = [json.loads(line) for line in (ROOT / "recipes/data/demo/train.jsonl").read_text().splitlines()]
    train = []
    for i, row in enumerate(rows):
        if row["task"] == "length":
            continue
        if row["task"] == "add" and i % 10 == 0:
            row["target"] = ""
        if row["task"] == "uppercase":
            row["target"] = "X" * 200
        train.append(json.dumps(row))
    (tmp_path / "train.jsonl").write_text("\n".join(train) + "\n")
    empty = sum(1 for line in train if json.loads(line)["target"] == "")
    command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml"]
    command += [f"output_dir={tmp_path / 'out'}", f"data.train_files=[{tmp_path / 'train.jsonl'}]"]
    command += ["train.max_steps=1", "train.warmup_steps=0", "eval.max_examples_per_task=1", "model.quantization=none"]
    command += ["deepspeed.config=ds_configs/zero2.json", "data.allow_untrained=true"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tasks ['length'] of cgc.clusters have no examples" in result.stderr
    exported = sorted(p.name for p in (tmp_path / "out" / "adapters" / "peft").iterdir())
    # no untrained adapter exported as if trained: neither length (no data) nor uppercase (all dropped)
    assert "length" not in exported and "uppercase" not in exported and len(exported) == 7
    adapter = tmp_path / "out" / "adapters" / "cgc"
    assert json.loads((adapter / "untrained_tasks.json").read_text()) == ["length", "uppercase"]
    export = [sys.executable, "recipes/export.py", "--config", "recipes/configs/tiny_cpu.yaml", f"--adapter={adapter}"]
    done = subprocess.run([*export, f"--out={tmp_path / 'export'}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "length" not in json.loads((tmp_path / "export" / "export.json").read_text())["tasks"]
    asked = subprocess.run([*export, "--tasks=length"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert asked.returncode == 2 and "['length'] had no training data" in asked.stderr, asked.stderr[-2000:]
    assert f"warning: {empty} training examples of task 'add' have an empty target" in result.stderr
    assert "drops every example of tasks ['uppercase']" in result.stderr
    assert "scored tasks without training data: ['length', 'uppercase']" in result.stderr
    scores = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert scores["untrained_tasks"] == ["length", "uppercase"] and "length" in scores["tasks"]
    # without data.allow_untrained, a task max_length leaves without an example is refused (after tokenising)
    long_uppercase = [{**r, "target": "X" * 200} if r["task"] == "uppercase" else r for r in rows]
    (tmp_path / "all.jsonl").write_text("\n".join(json.dumps(r) for r in long_uppercase) + "\n")
    data = [f"data.train_files=[{tmp_path / 'all.jsonl'}]", "eval.max_examples_per_task=0"]
    length_trains = [
        f"output_dir={tmp_path / 'refused'}",
        *data,
        "model.quantization=none",
        "data.allow_untrained=false",
    ]
    refused = subprocess.run(command[:4] + length_trains, cwd=ROOT, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "drops every example of tasks ['uppercase'] (their targets alone do not fit): they would be exported" in (
        refused.stderr
    )
    assert "Scored without any training data" in (tmp_path / "out" / "eval.md").read_text()


def test_the_recipe_stops_on_a_stale_lock_instead_of_hanging(tmp_path):
    lock = tmp_path / ops.SHM_COMM / "lock"
    lock.parent.mkdir()
    lock.touch()
    os.utime(lock, (time.time() - 900, time.time() - 900))
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml"]
    command += [f"output_dir={tmp_path / 'out'}", "train.max_steps=1", "train.warmup_steps=0"]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert str(lock) in result.stderr and "interrupted" in result.stderr and "Traceback" not in result.stderr


def test_the_recipe_refuses_int8_under_zero3_before_loading_a_model():
    result = subprocess.run(
        [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml", "model.quantization=int8"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "int8 with ZeRO-3" in result.stderr and "Traceback" not in result.stderr
    assert "Loading weights" not in result.stderr + result.stdout  # refused before any model loads


def test_a_cluster_without_training_data_is_frozen_and_left_out_of_the_optimizer(tmp_path):
    # Under ZeRO-3 (the tiny config's), which partitions the frozen cluster like the frozen base.
    rows = (ROOT / "recipes/data/demo/train.jsonl").read_text().splitlines()
    letters = {"first_letter", "last_letter", "length"}
    kept = [line for line in rows if json.loads(line)["task"] not in letters]
    (tmp_path / "train.jsonl").write_text("\n".join(kept) + "\n")
    command = [sys.executable, "recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml"]
    command += [f"output_dir={tmp_path / 'out'}", f"data.train_files=[{tmp_path / 'train.jsonl'}]"]
    command += ["train.max_steps=2", "eval.max_examples_per_task=1", "data.allow_untrained=true"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning: clusters ['letters'] have no training examples" in result.stderr
    summary = json.loads((tmp_path / "out" / "run_summary.json").read_text())
    assert summary["frozen_clusters"] == ["letters"]
    # the three clusters have the same shape (3 tasks each): two of them are optimized
    assert summary["optimized_params"] * 3 == summary["trainable_params"] * 2
