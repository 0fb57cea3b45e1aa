"""A rank that stops answering (SIGSTOP) ends a real 2-rank run with one message naming it and the last whole
checkpoint, within the collective timeout plus the launcher's 30 s, instead of a silent wait."""

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import ROOT
from tests.recipes.test_finetune import command
from tests.recipes.test_launcher_stop import no_leftovers, survivors  # noqa: F401  (no_leftovers: a fixture)


@pytest.mark.parametrize(("world", "stopped"), [(2, 0), (3, 1)])  # rank 0 serves the store; 3: two survivors
def test_a_stopped_rank_is_named_and_the_job_ends(tmp_path, world, stopped):
    """3 ranks: two survivors, still one message (the other stays quiet and the store outlives its reading)."""
    out, log = tmp_path / "run", tmp_path / "log"
    overrides = ["train.max_steps=500", "train.save_every=2", "eval.max_examples_per_task=0"]
    with open(log, "w") as sink:
        launcher = subprocess.Popen(
            command(out, *overrides, "train.collective_timeout_s=10", launcher_args=("--num_gpus", str(world))),
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    metrics, deadline = out / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.3)
    pattern = f"recipes/finetune.py --local_rank={stopped} .*output_dir={out} "
    rank = int(subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()[0])
    os.kill(rank, signal.SIGSTOP)
    started = time.time()
    assert launcher.wait(timeout=150) != 0
    waited, output = time.time() - started, log.read_text()
    messages = [line for line in output.splitlines() if "a collective waited more than" in line]
    assert len(messages) == 1, readable(output)
    who = f"rank(s) [{stopped}] stopped answering (last finished rank {stopped}: step" if stopped else "rank 0 stopped"
    assert who in messages[0] and f"the last whole checkpoint is {out}/checkpoints/step_" in messages[0]
    assert "Traceback" not in output and 10 <= waited < 120
    assert not survivors(out)


def readable(output: str) -> str:
    """The run's output for a failure report, without C++ stack frames (torch prints them with each store warning:
    they filled the report once and hid what happened)."""
    return "\n".join(line for line in output.splitlines() if not line.lstrip().startswith("frame #"))[-6000:]
