"""recipes/finetune.py for real: 2 CPU ranks over gloo with the deepspeed launcher, ZeRO-3 over an NF4 base."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cgc.distributed import free_port
from cgc.recipe_config import load_recipe_config

ROOT = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")
TINY = "recipes/configs/tiny_cpu.yaml"
QUIET = ["eval.max_examples_per_task=0"]
RUN = ["train.max_steps=8", "train.save_every=4", "eval.max_examples_per_task=2"]  # the shared zero3_run


def command(out: Path, *overrides, launcher_args=("--num_gpus", "2")) -> list[str]:
    return [
        DEEPSPEED,
        *launcher_args,
        "--master_port",
        str(free_port()),
        "recipes/finetune.py",
        "--config",
        TINY,
        f"output_dir={out}",
        *overrides,
    ]


def launch(out: Path, *overrides, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command(out, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3") / "run"
    result = launch(out, *RUN)
    # make install built DeepSpeed's comm op into the environment: a run compiles nothing
    assert "building DeepSpeed op" not in result.stderr
    return out, result.stdout


def test_zero3_nf4_trains_on_two_ranks_and_writes_every_output(zero3_run):
    out, stdout = zero3_run
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["zero_stage"] == 3 and summary["quantization"] == "nf4"
    assert summary["steps"] == 8 and summary["finished"]
    assert summary["base_param_bytes_per_rank"] <= 0.55 * summary["base_param_bytes_total"]
    for key in ("final_loss", "trainable_params", "peak_rss_mb", "tokens_per_s"):
        assert summary[key] > 0, key
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    resolved = load_recipe_config(out / "config.yaml", root=ROOT)  # the resolved config, written at start
    assert resolved.to_dict() == load_recipe_config(ROOT / TINY, [f"output_dir={out}", *RUN], root=ROOT).to_dict()
    assert "resolved config:" in stdout
    for r in records:
        assert {"step", "loss", "lr", "tokens_per_s", "cluster", "task_losses", "grad_norm"} <= set(r)
        assert r["cluster"] in ("words", "numbers", "letters") and r["task_losses"]
        # every param group's learning rate: one schedule, so gates / experts stays gate_lr / lr
        assert set(r["lr_groups"]) == {"experts", "gates"} and r["lr"] == r["lr_groups"]["experts"]
        if r["lr"] > 0:
            assert r["lr_groups"]["gates"] / r["lr"] == pytest.approx(resolved.train.gate_lr / resolved.train.lr)
    by_cluster: dict[str, list[float]] = {}
    for r in records:
        by_cluster.setdefault(r["cluster"], []).append(r["loss"])
    assert any(v[-1] < v[0] for v in by_cluster.values() if len(v) > 1)  # the loss goes down on a cluster
    assert records[-1]["loss"] < records[0]["loss"]
    assert any((out / "tensorboard").iterdir())
    for step in (4, 8):
        assert (out / "checkpoints" / f"step_{step}" / "cgc_complete.json").is_file()
    assert (out / "adapters" / "cgc" / "adapter_model.safetensors").is_file()
    tasks = [t for ts in json.loads((ROOT / "recipes/data/demo/clusters.json").read_text()).values() for t in ts]
    for task in tasks:
        config = json.loads((out / "adapters" / "peft" / task / "adapter_config.json").read_text())
        assert config["r"] == 12
    scores = json.loads((out / "eval.json").read_text())
    assert list(scores["tasks"]) == tasks and all(r["n"] == 2 for r in scores["tasks"].values())
    assert scores["tasks"]["sort_words"]["metric"] == "rouge_l" and scores["tasks"]["add"]["metric"] == "exact_match"
    predictions = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert sorted(p["task"] for p in predictions) == sorted(tasks * 2)  # every example answered once, both ranks
    assert "per-task scores" in stdout and "| **mean** |" in (out / "eval.md").read_text()


def test_adapter_written_under_zero3_matches_a_fresh_attach_with_its_weights(zero3_run):
    # The gathered ZeRO-3 partitions must have been saved whole, with non-zero B after training.
    out, _ = zero3_run
    saved = load_file(out / "adapters" / "cgc" / "adapter_model.safetensors")
    b = [v for k, v in saved.items() if k.endswith("lora_B")]
    assert b and all(t.dim() == 2 and t.numel() > 0 for t in b)
    assert any(t.abs().sum() > 0 for t in b)


def test_zero3_follows_zero2_step_for_step(zero3_run, tmp_path):
    # With one cluster per step most clusters are absent from any given step; ZeRO-3 must not re-apply their
    # previous gradients (it would without clearing its persistent gradient partitions).
    out, _ = zero3_run
    zero2 = tmp_path / "zero2"
    launch(zero2, "train.max_steps=8", "deepspeed.config=ds_configs/zero2.json", *QUIET)
    a, b = losses(out), losses(zero2)
    assert a.keys() == b.keys()
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])


def test_resume_is_exact(zero3_run, tmp_path):
    out, _ = zero3_run
    resumed = tmp_path / "resumed"
    launch(resumed, "train.max_steps=8", "train.stop_after=4", *QUIET)
    assert sorted(losses(resumed)) == [1, 2, 3, 4]
    assert not (resumed / "adapters").exists()  # stopped early: no final exports yet
    result = launch(resumed, "train.max_steps=8", "resume=latest", *QUIET)
    assert "resumed from" in result.stdout and "step_4" in result.stdout
    full, again = losses(out), losses(resumed)
    assert sorted(again) == list(range(1, 9))
    for step in range(5, 9):
        assert abs(full[step] - again[step]) <= 1e-6, (step, full[step], again[step])


def test_resume_with_dropout_is_exact(tmp_path):
    # Dropout draws from torch's generator, saved with each rank's state; the data loader has a generator of its
    # own, so creating its iterator after the restore does not shift the dropout masks.
    run = ["cgc.dropout=0.1", "train.max_steps=6", *QUIET]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    launch(full, *run)
    launch(resumed, *run, "train.stop_after=3")
    launch(resumed, *run, "resume=latest")
    a, b = losses(full), losses(resumed)
    assert sorted(b) == list(range(1, 7))
    for step in range(4, 7):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


def test_sigterm_checkpoints_and_exits_zero_and_resume_skips_an_incomplete_checkpoint(tmp_path):
    out = tmp_path / "preempted"
    cmd = command(out, "train.max_steps=500", "train.save_every=0", *QUIET)
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.5)
    assert metrics.exists(), "training never started"
    # A scheduler preempting the job signals every process of it: here, both ranks.
    pattern = f"recipes/finetune.py --local_rank=.*output_dir={out}"  # the rank processes, not the launchers
    ranks = [int(p) for p in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()]
    assert len(ranks) == 2
    for pid in ranks:
        os.kill(pid, signal.SIGTERM)
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output[-3000:]
    assert "stopped by SIGTERM" in output
    saved = sorted((out / "checkpoints").glob("step_*/cgc_complete.json"))
    assert len(saved) == 1
    stopped_at = json.loads(saved[0].read_text())["step"]
    assert 2 <= stopped_at < 500
    # A save that died half-way: a later step's directory without the completion marker.
    broken = out / "checkpoints" / f"step_{stopped_at + 100}"
    broken.mkdir()
    (broken / "cgc_rank0.pt").write_bytes(b"partial")
    result = launch(out, f"train.max_steps={stopped_at + 1}", "resume=latest", *QUIET)
    assert f"skipping incomplete checkpoint {broken}" in result.stderr + result.stdout
    assert f"resumed from {saved[0].parent} at step {stopped_at}" in result.stdout
    assert max(losses(out)) == stopped_at + 1


def test_two_single_rank_launchers_as_two_nodes_match_one_launcher(zero3_run, tmp_path):
    out, _ = zero3_run
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    nodes = tmp_path / "nodes"
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [
                DEEPSPEED,
                "--hostfile",
                str(hostfile),
                "--no_ssh",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                port,
                "recipes/finetune.py",
                "--config",
                TINY,
                f"output_dir={nodes}",
                "train.max_steps=8",
                *QUIET,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][-2000:] + outputs[1][-2000:]
    assert json.loads((nodes / "run_summary.json").read_text())["world_size"] == 2
    a, b = losses(out), losses(nodes)
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) <= 1e-6 for s in a)
    ours = load_file(nodes / "adapters" / "cgc" / "adapter_model.safetensors")
    theirs = load_file(out / "adapters" / "cgc" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lrr=1"], "unknown key train.lrr (did you mean train.lr?)"),
        (["train.lr=-0.5"], "train.lr must be > 0, got -0.5"),
        (["data.train_files=[missing.jsonl]"], "data.train_files: file not found: missing.jsonl"),
        (["cgc.target_modules=[query_key_value]", "model.quantization=none"], "matched no module"),
    ],
    ids=["unknown-key", "negative-lr", "missing-data", "targets-match-nothing"],
)
def test_bad_config_exits_nonzero_with_one_clear_message(tmp_path, overrides, message):
    cmd = [sys.executable, "recipes/finetune.py", "--config", TINY, f"output_dir={tmp_path / 'bad'}", *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_tasks(tmp_path):
    cmd = [
        sys.executable,
        "recipes/finetune.py",
        "--config",
        TINY,
        f"output_dir={tmp_path / 'nan'}",
        "train.lr=1e30",
        "train.max_grad_norm=0",
        "train.warmup_steps=0",
        "train.max_steps=6",
        "model.quantization=none",
        "deepspeed.config=ds_configs/zero2.json",
        *QUIET,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 3, (result.stdout + result.stderr)[-3000:]
    assert re.search(r"error: loss is (nan|inf|-inf) at step \d; this rank's batch held tasks \['", result.stderr)


def test_universal_checkpoint_resumes_on_another_number_of_ranks(zero3_run, tmp_path):
    out, _ = zero3_run
    run = tmp_path / "run"
    shutil.copytree(out / "checkpoints", run / "checkpoints")
    step_4 = run / "checkpoints" / "step_4"
    # A plain resume on a different world size is refused with the way out.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    single = [sys.executable, "recipes/finetune.py", "--config", TINY, f"output_dir={run}", "train.max_steps=4", *QUIET]
    refused = subprocess.run([*single, f"resume={step_4}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "python -m cgc.checkpoint to-universal" in refused.stderr
    subprocess.run(
        [sys.executable, "-m", "cgc.checkpoint", "to-universal", str(step_4)], cwd=ROOT, check=True, capture_output=True
    )
    universal = run / "checkpoints" / "step_4_universal"
    result = subprocess.run([*single, f"resume={universal}"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "resumed from universal checkpoint" in result.stdout
    # Nothing trained after loading: the 1-rank export must be the 2-rank step-4 state.
    two_ranks = tmp_path / "two"
    shutil.copytree(out / "checkpoints", two_ranks / "checkpoints")
    launch(two_ranks, "train.max_steps=4", f"resume={two_ranks / 'checkpoints' / 'step_4'}", *QUIET)
    one = load_file(run / "adapters" / "cgc" / "adapter_model.safetensors")
    two = load_file(two_ranks / "adapters" / "cgc" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    assert any(two[k].abs().sum() > 0 for k in two if k.endswith("lora_B"))
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=0, rtol=0, msg=key)


def test_torchrun_trains_to_the_same_losses_as_the_deepspeed_launcher(zero3_run, tmp_path):
    out, _ = zero3_run
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [
        torchrun,
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "recipes/finetune.py",
        "--config",
        TINY,
        f"output_dir={tmp_path / 'torchrun'}",
        "train.max_steps=8",
        *QUIET,
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    a, b = losses(out), losses(tmp_path / "torchrun")
    assert a.keys() == b.keys() and all(abs(a[s] - b[s]) <= 1e-6 for s in a)
