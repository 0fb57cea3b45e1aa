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
# a parent whose command line names a launcher (here compare.py) or not, which starts the "rank" and waits
PARENT = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]])"


@pytest.mark.parametrize(("word", "stops"), [("recipes/compare.py", True), ("train_my_model.py", False)])
def test_a_rank_stops_when_its_launcher_ends(word, stops):
    command = [sys.executable, "-c", PARENT, RANK, "8", word]
    parent = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout.readline().strip() == "ready"
    parent.send_signal(signal.SIGKILL)  # the launcher dies without a word to the rank
    parent.wait()
    rest = parent.stdout.read()  # the rank's last line (it holds the pipe until it exits)
    if stops:
        assert rest.startswith(f"stopped by the end of its launcher (pid {parent.pid})"), rest
    else:
        assert rest.startswith("still running"), rest
