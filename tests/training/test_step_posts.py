"""The step poster (cgc.training.stall.StepPosts) must never turn a rank's clean exit into an abort.

Its daemon thread spends time inside the c10d store's C++ calls with the GIL released. If the interpreter is
finalizing when such a call returns, Python ends the thread as it retakes the GIL, inside a C++ frame, and the
process dies with "terminate called without an active exception" (exit -6): the full suite once caught a rank of a
preempted 2-rank run doing so after its checkpoint was saved. The poster stops itself at exit (atexit) and when the
train loop ends (`close`)."""

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

# A store whose `set` waits 1 s inside the C++ store with the GIL released (as a set to a busy server does), and an
# object whose finalizer keeps the interpreter finalizing for 2 s: the set returns while it does.
SCRIPT = textwrap.dedent("""
    import sys, time
    from datetime import timedelta
    import torch.distributed as dist
    from cgc.training.stall import StepPosts

    server = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=30))

    class SlowStore:
        def set(self, key, value):
            try:
                server.wait(["never"], timedelta(seconds=1))
            except Exception:
                pass
            self.sets = getattr(self, "sets", 0) + 1

    posts = StepPosts(0, 1)
    posts.store = SlowStore()
    if sys.argv[1] == "unguarded":
        posts.close = lambda: None  # the mutation: nothing stops the poster before the interpreter finalizes
    posts.post(1)
    time.sleep(0.3)  # the poster is inside set now

    class SlowFinalizer:
        def __del__(self, sleep=time.sleep):
            sleep(2)

    keep = SlowFinalizer()
    if sys.argv[2] == "closed":
        posts.close()
        assert not posts.poster.is_alive() and posts.store.sets == 1
    print("main done", flush=True)
""")


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )  # fmt: skip


def test_a_rank_exiting_while_the_poster_is_in_the_store_exits_cleanly():
    for how in ("at_exit", "closed"):
        done = run("guarded", how)
        assert done.returncode == 0 and "main done" in done.stdout, (how, done.returncode, done.stderr[-2000:])
        assert "terminate called" not in done.stderr


def test_without_the_guard_the_same_exit_aborts():
    """The mutation the guard is for, so that the test above can fail."""
    done = run("unguarded", "at_exit")
    assert done.returncode != 0 and "terminate called without an active exception" in done.stderr, done.stderr[-2000:]
