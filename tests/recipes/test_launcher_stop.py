"""Stopping a real 2-rank run through each documented launch command: every rank checkpoints, the command returns
0 (or, for a bare launcher, what the README says), and no process of the run survives it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cgc.training.distributed import free_port
from tests.conftest import ROOT
from tests.recipes.test_finetune import DEEPSPEED, TINY

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
LONG = ["train.max_steps=500", "train.save_every=0", "eval.max_examples_per_task=0"]


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path):
    """A failing test must not leave ranks training on the CI machine."""
    yield
    subprocess.run(["pkill", "-9", "-f", f"output_dir={tmp_path}"])


def finetune_args(out: Path) -> list[str]:
    return ["recipes/finetune.py", "--config", TINY, f"output_dir={out}", *LONG]


def commands(out: Path) -> dict[str, list[str]]:
    port = str(free_port())
    return {
        "local.sh": ["bash", "launch/local.sh", "2", TINY, f"output_dir={out}", *LONG],
        "supervised torchrun": [
            sys.executable, "launch/supervise.py", TORCHRUN, "--nproc_per_node", "2", "--master_port", port,
            *finetune_args(out),
        ],
        "deepspeed": [DEEPSPEED, "--num_gpus", "2", "--master_port", port, *finetune_args(out)],
        "torchrun": [TORCHRUN, "--nproc_per_node", "2", "--master_port", port, *finetune_args(out)],
    }  # fmt: skip


def start(command: list[str], out: Path, log: Path) -> subprocess.Popen:
    """The command (its output into `log`: a pipe would stay open as long as any rank lives), once its ranks have
    logged 2 steps."""
    env = {**os.environ, "MASTER_PORT": str(free_port()), "DEEPSPEED": DEEPSPEED}
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    metrics, deadline = out / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    assert metrics.exists(), "training never started"
    return process


def survivors(out: Path) -> list[str]:
    """Processes whose command line names this run's output_dir (launchers and ranks)."""
    found = subprocess.run(["pgrep", "-af", f"output_dir={out}"], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def complete_checkpoints(out: Path) -> list[int]:
    return [json.loads(p.read_text())["step"] for p in sorted((out / "checkpoints").glob("step_*/cgc_complete.json"))]


@pytest.mark.parametrize(
    ("launcher", "signals"),
    [
        ("local.sh", [signal.SIGTERM, signal.SIGTERM]),
        ("local.sh", [signal.SIGINT]),
        ("supervised torchrun", [signal.SIGTERM]),
    ],
)
def test_stopping_the_launch_command_checkpoints_and_returns_when_no_rank_is_left(tmp_path, launcher, signals):
    out, log = tmp_path / "run", tmp_path / "log"
    process = start(commands(out)[launcher], out, log)
    for sig in signals:  # a scheduler's two SIGTERMs, a terminal's Ctrl-C (it reaches the supervisor only)
        process.send_signal(sig)
        time.sleep(0.5)
    process.wait(timeout=300)
    left, output = survivors(out), log.read_text()  # at the moment the command returned
    assert process.returncode == 0, output[-3000:]
    assert "asked the 2 ranks to checkpoint and stop" in output and "stopped by SIGTERM" in output
    assert not left, left
    assert len(complete_checkpoints(out)) == 1 and "Traceback" not in output


def test_a_bare_deepspeed_launcher_killed_leaves_no_rank_training(tmp_path):
    """DeepSpeed's runner on one node has no signal handler: SIGTERM ends it at once (143, as the README says) and
    its ranks are not told. They notice their launcher is gone, checkpoint and exit within seconds."""
    out, log = tmp_path / "run", tmp_path / "log"
    process = start(commands(out)["deepspeed"], out, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == -signal.SIGTERM
    deadline = time.time() + 120
    while time.time() < deadline and survivors(out):
        time.sleep(0.5)
    assert not survivors(out), survivors(out)
    assert len(complete_checkpoints(out)) == 1
    assert "stopped by the end of its launcher" in log.read_text()


def test_a_bare_torchrun_passes_sigterm_on_and_exits_1_as_the_readme_says(tmp_path):
    """torchrun forwards SIGTERM to its ranks (they checkpoint) and waits for them, then exits 1 with torch's own
    SignalException: its code, not ours. The README row says so; this test notices if torchrun changes."""
    out, log = tmp_path / "run", tmp_path / "log"
    process = start(commands(out)["torchrun"], out, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 1
    assert not survivors(out), survivors(out)
    assert len(complete_checkpoints(out)) == 1
    assert "SignalException" in log.read_text()
