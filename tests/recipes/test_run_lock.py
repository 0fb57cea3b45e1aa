"""One run per output_dir: a second run into a directory a live run holds exits 2 naming the holder, on one rank or
two, and the first run's files stay whole; a dead run's lock never blocks."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cgc.training.run_lock import OutputDirInUse, RunLock
from tests.conftest import ROOT
from tests.recipes.test_finetune import DEEPSPEED, free_port

TINY = "recipes/configs/tiny_cpu.yaml"
QUICK = [
    "eval.max_examples_per_task=0",
    "train.save_every=0",
    "model.quantization=none",
    "deepspeed.config=ds_configs/zero2.json",
]  # noqa: E501
HOLD = "import sys, time; from cgc.training.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"  # noqa: E501


def solo_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


def test_a_lock_names_its_holder_and_a_dead_holder_never_blocks(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputDirInUse, match=f"in use by another run \\(pid {holder.pid} on "):
        RunLock(tmp_path).acquire()
    holder.send_signal(signal.SIGKILL)  # no cleanup at all: the OS drops the lock with the process
    holder.wait()
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".cgc.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_a_second_run_into_a_live_runs_output_dir_is_refused_and_the_first_stays_whole(tmp_path):
    out = tmp_path / "run"
    first_cmd = [sys.executable, "recipes/finetune.py", "--config", TINY, f"output_dir={out}", *QUICK]
    first = subprocess.Popen(
        [*first_cmd, "train.max_steps=100000"],
        cwd=ROOT,
        env=solo_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert first.poll() is None, "the first run ended before the test could start the second"
    # resume=latest would pass every other check: only the lock stops it from training into a live run's files
    for second_cmd in (
        [*first_cmd, "train.max_steps=100000", "resume=latest"],
        [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), *first_cmd[1:], "train.max_steps=100000",
         "resume=latest"],
    ):  # fmt: skip
        second = subprocess.run(second_cmd, cwd=ROOT, env=solo_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is in use by another run (pid {first.pid} on " in second.stderr and "Traceback" not in second.stderr
    assert first.poll() is None  # still training: the refusals did not stop it
    first.send_signal(signal.SIGTERM)  # preemption: checkpoint, exit 0
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one run's steps, once each
    assert len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", f"step_{steps[-1]}"]
