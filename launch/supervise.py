"""Stop a launched job the way a scheduler's preemption does, and return only when none of it is left.

    python launch/supervise.py deepspeed --num_gpus 2 recipes/finetune.py --config ...
    python launch/supervise.py torchrun --nproc_per_node 2 recipes/finetune.py --config ...

(`launch/local.sh` runs its `deepspeed` command this way.) Neither launcher stops a job cleanly by itself: on one
node DeepSpeed's runner has no signal handler, so SIGTERM ends it at once while its `launch.py` and the ranks keep
training; `launch.py` and torchrun, signalled, SIGKILL ranks that are still saving after 30 s and exit non-zero.

The supervisor starts the launcher in a session of its own (a terminal's Ctrl-C reaches the supervisor only) and
on SIGTERM or SIGINT sends SIGTERM to the ranks alone: each checkpoints at the next step boundary and exits 0
(cgc.training.preemption), the launcher sees its ranks end well and exits 0, and the supervisor returns the
launcher's exit code once no process it started is left. It is a child subreaper (prctl), so every process the
launcher started stays its descendant even when orphaned or in a session of its own (torchrun starts each rank
in a new session): none can outlive it unseen. A second signal (schedulers send two) changes
nothing; a third ends every process of the job with SIGKILL (the last checkpoint stays whole: a save is marked
complete only when written, cgc.training.checkpoint_marker).

Standard library only (any python3 runs it, in a few milliseconds); Linux: it reads /proc.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RANK_ENV = "LOCAL_RANK"  # set by both launchers for each rank, not in their own environment
KILL_AFTER_SIGNALS = 3
# after the launcher exits, how long what it started may take to end (CGC_LEFTOVER_GRACE_S: tests)
LEFTOVER_GRACE_S = float(os.environ.get("CGC_LEFTOVER_GRACE_S", "30"))
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def parents(zombies: bool = False) -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/<pid>/stat: the field after the command's closing paren);
    `zombies`: also those that ended and wait for their parent to collect them."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, ...
            if zombies or fields[0] != "Z":
                table[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(root: int, table: dict[int, int] | None = None) -> list[int]:
    """Every process below `root` in `table` (`parents()`, read now when not given), children first."""
    table, found, frontier = parents() if table is None else table, [], [root]
    while frontier:
        children = [c for c, p in table.items() if p in frontier]
        found += children
        frontier = children
    return found


def has_rank_env(pid: int) -> bool:
    try:
        return any(
            v.startswith(f"{RANK_ENV}=".encode()) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        )
    except OSError:
        return False


def ranks_below(root: int) -> list[int]:
    """The rank processes below `root`: LOCAL_RANK in their environment and not in their parent's (a rank's own
    children, e.g. data-loader workers, inherit it and end with their rank)."""
    table = parents()
    return [p for p in descendants(root, table) if has_rank_env(p) and not has_rank_env(table.get(p, 0))]


def send(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def reap() -> None:
    """Collect the exit status of orphans that became ours (we are their subreaper), so they do not stay zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def become_subreaper() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: orphans go to init, as without the supervisor
        pass


def supervise(command: list[str]) -> int:
    """Run `command` (a launcher and its arguments) as described above. -> its exit code (128 + signal when a
    signal ended it, as a shell reports it)."""
    become_subreaper()
    me, signals, started = os.getpid(), [], []

    def on_signal(signum, frame):
        signals.append(signal.Signals(signum).name)
        if not started:  # before the launcher exists: it is stopped as soon as it does
            return
        if len(signals) >= KILL_AFTER_SIGNALS:
            print(f"cgc: {signals[-1]} ({len(signals)}th signal): killing every process of the job", file=sys.stderr)
            send(descendants(me), signal.SIGKILL)
            return
        ranks = ranks_below(me) if len(signals) == 1 else []
        send(ranks, signal.SIGTERM)
        if ranks:
            print(f"cgc: {signals[-1]}: asked the {len(ranks)} ranks to checkpoint and stop; waiting for them "
                  f"(signal {KILL_AFTER_SIGNALS - len(signals)} more times to kill them)", file=sys.stderr)  # fmt: skip
        elif len(signals) == 1:  # no rank yet (still starting): nothing to save, stop the launcher
            send(descendants(me), signal.SIGTERM)
            print(f"cgc: {signals[-1]} before any rank started: stopping the launcher", file=sys.stderr)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        child = subprocess.Popen(command, start_new_session=True)
    except OSError as err:
        print(f"cgc: cannot start {command[0]}: {err}", file=sys.stderr)
        return 127
    started.append(child.pid)
    if signals:
        send([child.pid], signal.SIGTERM)
    code = child.wait()
    if left := wait_until_gone(me, LEFTOVER_GRACE_S):
        print(f"cgc: processes {left} of the job outlived its launcher by {LEFTOVER_GRACE_S:.0f} s: killed",
              file=sys.stderr)  # fmt: skip
        send(left, signal.SIGKILL)
        wait_until_gone(me, 10.0)
    return code if code >= 0 else 128 - code


def wait_until_gone(me: int, seconds: float) -> list[int]:
    """Reap our descendants as they end (ended ones count until collected: orphans are ours to collect), for at
    most `seconds`. -> those still there then."""
    deadline = time.monotonic() + seconds
    while True:
        reap()
        left = descendants(me, parents(zombies=True))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("usage: python launch/supervise.py LAUNCHER [ARGS...]", file=sys.stderr)
        return 2
    return supervise(command)


if __name__ == "__main__":
    sys.exit(main())
