"""One run per output_dir: an exclusive `fcntl.flock` on `output_dir/.cgc.lock`, taken by rank 0 before the run writes
anything and held for the run's life. The OS releases it when the process ends, however it ends (a crash, SIGKILL,
a lost node), so a stale lock never blocks: a lock file left behind by a dead run is simply locked again.

flock is advisory and local to a machine on some network filesystems: on NFS (Linux >= 2.6.12 emulates it with
POSIX byte-range locks) it works across clients that mount with locking on; on file systems without lock support
it raises, and the run says so and continues unlocked rather than refusing every run there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".cgc.lock"


class OutputDirInUse(Exception):
    """Another live process holds the output_dir's lock; the message names it."""


class RunLock:
    """The held lock of one output_dir (rank 0's). `release()` frees it; so does the end of the process."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.file = None

    def acquire(self) -> RunLock:
        """Take the lock or raise OutputDirInUse naming its holder (pid, host, start time)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # never truncate: the holder's record stays readable until we hold it
        except OSError as err:
            raise OutputDirInUse(f"cannot open the lock file {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = describe_holder(handle.read())
            handle.close()
            raise OutputDirInUse(
                f"output_dir {self.path.parent} is in use by another run ({holder}); two runs in one directory would "
                "mix their metrics and checkpoints. Wait for it to end, stop it, or give this run another output_dir"
            ) from None
        except OSError as err:  # a file system without lock support
            print(f"warning: cannot lock {self.path} ({err.strerror}): nothing stops a second run into this "
                  "output_dir", file=sys.stderr)  # fmt: skip
            handle.close()
            return self
        handle.seek(0)
        handle.truncate()
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        self.file = handle
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing the last descriptor releases a flock
            self.file = None


def describe_holder(text: str) -> str:
    try:
        record = json.loads(text)
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"
