"""SIGTERM / SIGINT (a scheduler's preemption, a user's Ctrl-C) as a flag the ranks compare at safe points."""

from __future__ import annotations

import signal


class Preemption:
    """SIGTERM/SIGINT set a flag, which the ranks compare at safe points (one collective): training checkpoints at
    the next step boundary and exits 0; eval stops at the next batch; export finishes."""

    def __init__(self):
        self.requested, self.signal_name = False, None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name

    @property
    def name(self) -> str:
        """The signal's name, on a rank that may not have received it itself."""
        return self.signal_name or "a signal (on another rank)"
