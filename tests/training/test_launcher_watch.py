"""A rank stops as on SIGTERM when a launcher above it ends (cgc.training.preemption): a bare `deepspeed` runner
killed on one node, or compare.py killed above its child run, must not leave a rank training on."""

import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT

RANK = """
import sys, time
from cgc.training.preemption import Preemption
p = Preemption()
print("ready", flush=True)
for _ in range(int(sys.argv[1]) * 10):
    if p.requested:
        print("stopped by", p.name, flush=True)
        sys.exit(0)
    time.sleep(0.1)
print("still running", flush=True)
"""
# a parent, a script named like a launcher (here compare.py) or not, which starts the "rank" and waits
PARENT = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"


@pytest.mark.parametrize(("script", "stops"), [("recipes/compare.py", True), ("train_my_model.py", False)])
def test_a_rank_stops_when_its_launcher_ends(tmp_path, script, stops):
    parent_script = tmp_path / script
    parent_script.parent.mkdir(parents=True, exist_ok=True)
    parent_script.write_text(PARENT)
    command = [sys.executable, str(parent_script), RANK, "8"]
    parent = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"
    parent.send_signal(signal.SIGKILL)  # the launcher dies without a word to the rank
    parent.wait()
    rest = parent.stdout.read()  # the rank's last line (it holds the pipe until it exits)
    if stops:
        assert rest.startswith(f"stopped by the end of its launcher (pid {parent.pid})"), rest
    else:
        assert rest.startswith("still running"), rest


def test_launchers_are_told_by_program_module_or_script_not_by_a_word():
    from cgc.training.preemption import is_launcher

    venv = "/venv/bin"
    assert is_launcher([f"{venv}/python", f"{venv}/deepspeed", "--num_gpus", "2", "recipes/finetune.py"])
    assert is_launcher([f"{venv}/python", "-u", "-m", "deepspeed.launcher.launch", "--world_info=e30="])
    assert is_launcher([f"{venv}/python", f"{venv}/torchrun", "--nproc_per_node", "2"])
    assert is_launcher(["python3", "launch/supervise.py", "deepspeed"])
    # a test run, an editor, a shell that merely mention deepspeed are not launchers
    assert not is_launcher([f"{venv}/python", "-m", "pytest", "tests/training/test_deepspeed_ops.py"])
    assert not is_launcher(["bash", "-c", "deepspeed --num_gpus 2 x.py"])
    assert not is_launcher(["vim", "ds_configs/deepspeed_notes.txt"])
