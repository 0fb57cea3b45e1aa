"""SIGTERM / SIGINT (a scheduler's preemption, a user's Ctrl-C) as a flag the ranks compare at safe points; and the
launcher's end, which a rank must notice itself: on one node DeepSpeed's runner dies of SIGTERM without telling
its ranks (launch/supervise.py), which would otherwise train on, orphaned, into an output_dir a restart reuses."""

from __future__ import annotations

import signal
import threading
import time

import psutil

# command-line words of the processes that launch ranks: DeepSpeed's runner and launch.py, torchrun, the supervisor,
# and compare.py, whose child runs must not train on when it is stopped
LAUNCHER_WORDS = ("deepspeed", "torchrun", "torch.distributed.run", "launch/supervise.py", "recipes/compare.py")
WATCH_EVERY_S = 1.0


class Preemption:
    """SIGTERM/SIGINT set a flag, which the ranks compare at safe points (one collective): training checkpoints at
    the next step boundary and exits 0; eval stops at the next batch; export finishes. The end of any launcher
    process above this rank sets the same flag (checked every WATCH_EVERY_S by a daemon thread)."""

    def __init__(self, watch_launchers: bool = True):
        self.requested, self.signal_name = False, None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        launchers = launcher_ancestors() if watch_launchers else []
        if launchers:
            threading.Thread(target=self._watch, args=(launchers,), daemon=True, name="cgc-launcher-watch").start()

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def _watch(self, launchers: list[psutil.Process]) -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            gone = [p for p in launchers if ended(p)]
            if gone:
                self.requested = True
                self.signal_name = self.signal_name or f"the end of its launcher (pid {gone[0].pid})"
                return

    @property
    def name(self) -> str:
        """The signal's name, on a rank that may not have received it itself."""
        return self.signal_name or "a signal (on another rank)"


def launcher_ancestors() -> list[psutil.Process]:
    """This process's parent, grandparent, ... as long as each is a launcher (LAUNCHER_WORDS in its command line)."""
    launchers, process = [], psutil.Process().parent()
    while process is not None:
        try:
            if not any(word in " ".join(process.cmdline()) for word in LAUNCHER_WORDS):
                break
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            break
        launchers.append(process)
        process = process.parent()
    return launchers


def ended(process: psutil.Process) -> bool:
    """Exited (a zombie its parent has not reaped yet counts) or its pid reused (is_running compares start times)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
