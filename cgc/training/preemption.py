"""SIGTERM / SIGINT (a scheduler's preemption, a user's Ctrl-C) as a flag the ranks compare at safe points; and the
launcher's end, which a rank must notice itself: on one node DeepSpeed's runner dies of SIGTERM without telling
its ranks (launch/supervise.py), which would otherwise train on, orphaned, into an output_dir a restart reuses."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

# the processes that launch ranks, by their command line: DeepSpeed's runner and launch.py, torchrun, the
# supervisor, and compare.py, whose child runs must not train on when it is stopped
LAUNCHER_PROGRAMS = ("deepspeed", "torchrun")  # an executable's name (argv[0], or argv[1] after an interpreter)
LAUNCHER_MODULES = ("deepspeed.launcher.launch", "deepspeed.launcher.runner", "torch.distributed.run")  # python -m
LAUNCHER_SCRIPTS = ("launch/supervise.py", "recipes/compare.py")
WATCH_EVERY_S = 1.0


class Preemption:
    """SIGTERM/SIGINT set a flag, which the ranks compare at safe points (one collective): training checkpoints at
    the next step boundary and exits 0; eval stops at the next batch; export finishes. The end of any launcher
    process above this rank sets the same flag (checked every WATCH_EVERY_S by a daemon thread)."""

    def __init__(self, launchers: list[psutil.Process] | None = None):
        """`launchers`: the launcher processes above this rank to watch (`launcher_ancestors()`, best taken when the
        process starts: a launcher may end while the model loads); None: look them up now."""
        self.requested, self.signal_name = False, None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        launchers = launcher_ancestors() if launchers is None else launchers
        if launchers:
            threading.Thread(target=self._watch, args=(launchers,), daemon=True, name="cgc-launcher-watch").start()

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name

    def _watch(self, launchers: list[psutil.Process]) -> None:
        while True:
            gone = [p for p in launchers if ended(p)]
            if gone:
                self.requested = True
                self.signal_name = self.signal_name or f"the end of its launcher (pid {gone[0].pid})"
                return
            time.sleep(WATCH_EVERY_S)

    @property
    def name(self) -> str:
        """The signal's name, on a rank that may not have received it itself."""
        return self.signal_name or "a signal (on another rank)"


def launcher_ancestors() -> list[psutil.Process]:
    """This process's parent, grandparent, ... as long as each is a launcher (`is_launcher`)."""
    launchers, process = [], psutil.Process().parent()
    while process is not None:
        try:
            if not is_launcher(process.cmdline()):
                break
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            break
        launchers.append(process)
        process = process.parent()
    return launchers


def is_launcher(argv: list[str]) -> bool:
    """`deepspeed ...`, `python .../torchrun ...`, `python -m deepspeed.launcher.launch ...`, `python
    launch/supervise.py ...`: by the program, module or script a command line runs, not by any word in it."""
    programs = [os.path.basename(a) for a in argv[:2]]
    modules = [argv[i + 1] for i in range(min(len(argv) - 1, 3)) if argv[i] == "-m"]
    scripts = [a for a in argv[:3] if a.endswith(LAUNCHER_SCRIPTS)]
    return any(p in LAUNCHER_PROGRAMS for p in programs) or any(m in LAUNCHER_MODULES for m in modules) or bool(scripts)


def ended(process: psutil.Process) -> bool:
    """Exited (a zombie its parent has not reaped yet counts) or its pid reused (is_running compares start times)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
