"""Stop a launched job the way a scheduler's preemption does, and return only when none of it is left.

    python launch/supervise.py deepspeed --num_gpus 2 recipes/finetune.py --config ...
    python launch/supervise.py torchrun --nproc_per_node 2 recipes/finetune.py --config ...

(`launch/local.sh` runs its `deepspeed` command this way.) Neither launcher stops a job cleanly by itself: on one
node DeepSpeed's runner has no signal handler, so SIGTERM ends it at once while its `launch.py` and the ranks keep
training; `launch.py` and torchrun, signalled, SIGKILL ranks that are still saving after 30 s and exit non-zero.

The supervisor starts the launcher in a session of its own (a terminal's Ctrl-C reaches the supervisor only) and
on SIGTERM or SIGINT sends SIGTERM to the ranks alone: each checkpoints at the next step boundary and exits 0
(cgc.training.preemption), the launcher sees its ranks end well and exits 0, and the supervisor returns the
launcher's exit code once no process of the session is left. A second signal (schedulers send two) changes
nothing; a third ends every process of the job with SIGKILL (the last checkpoint stays whole: a save is marked
complete only when written, cgc.training.checkpoint_marker).

Standard library only (any python3 runs it, in a few milliseconds); Linux: it reads /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RANK_ENV = "LOCAL_RANK"  # set by both launchers for each rank, not in their own environment
KILL_AFTER_SIGNALS = 3
LEFTOVER_GRACE_S = 30.0  # after the launcher exits, how long its session's processes may take to end


def parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/<pid>/stat: the field after the command's closing paren)."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            table[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return table


def has_rank_env(pid: int) -> bool:
    try:
        return any(
            v.startswith(f"{RANK_ENV}=".encode()) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        )
    except OSError:
        return False


def ranks_of(launcher: int) -> list[int]:
    """The rank processes under `launcher`: those whose environment has LOCAL_RANK and whose parent's has not (a
    rank's own children, e.g. data-loader workers, inherit it and end with their rank)."""
    table, below, ranks = parents(), [launcher], []
    while below:
        pid = below.pop()
        for child in (c for c, p in table.items() if p == pid):
            below.append(child)
            if has_rank_env(child) and not has_rank_env(pid):
                ranks.append(child)
    return ranks


def session_alive(session: int) -> list[int]:
    """The pids still in process session `session` (the launcher's: it and everything it started), zombies aside."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session, ...
                alive.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return alive


def supervise(command: list[str]) -> int:
    """Run `command` (a launcher and its arguments) as described above. -> its exit code (128 + signal when a
    signal ended it, as a shell reports it)."""
    try:
        child = subprocess.Popen(command, start_new_session=True)
    except OSError as err:
        print(f"cgc: cannot start {command[0]}: {err}", file=sys.stderr)
        return 127
    signals = []

    def on_signal(signum, frame):
        signals.append(signal.Signals(signum).name)
        if len(signals) >= KILL_AFTER_SIGNALS:
            print(f"cgc: {signals[-1]} ({len(signals)}th signal): killing every process of the job", file=sys.stderr)
            os.killpg(child.pid, signal.SIGKILL)
            return
        ranks = ranks_of(child.pid) if len(signals) == 1 else []
        for rank in ranks:
            try:
                os.kill(rank, signal.SIGTERM)
            except ProcessLookupError:
                continue
        if ranks:
            print(f"cgc: {signals[-1]}: asked the {len(ranks)} ranks to checkpoint and stop; waiting for them "
                  f"(signal {KILL_AFTER_SIGNALS - len(signals)} more times to kill them)", file=sys.stderr)  # fmt: skip
        elif len(signals) == 1:  # no rank yet (still starting): nothing to save, stop the launcher
            os.killpg(child.pid, signal.SIGTERM)
            print(f"cgc: {signals[-1]} before any rank started: stopping the launcher", file=sys.stderr)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = child.wait()
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := session_alive(child.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        print(f"cgc: processes {left} of the job outlived its launcher by {LEFTOVER_GRACE_S:.0f} s: killed",
              file=sys.stderr)  # fmt: skip
        os.killpg(child.pid, signal.SIGKILL)
    return code if code >= 0 else 128 - code


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
