"""A rank that stops answering (hung, stopped, its node gone) ends the job with one message, not a silent wait.

Every collective of the run has a timeout (train.collective_timeout_s, given to the process group and the side
group). Each rank posts its last finished step to the process group's key-value store (`StepPosts`). When a
collective times out, the ranks still there say "alive" in the store and wait a moment for each other (their
collectives time out at about the same time); the ranks that never say it are the ones that stopped, named with
their last step by the lowest rank still there, which then waits for the others to finish reading (under
DeepSpeed's launcher the store lives in rank 0's process). Rank 0 always speaks when it is there, whatever its roll
call learnt in time: a job that ends must say why (an unfinished roll call names no rank). When rank 0
is the one that stopped, the store does not answer at all, and rank 1 says so. On GPUs NCCL's own watchdog will
usually end the ranks first, with its message (TORCH_NCCL_ASYNC_ERROR_HANDLING; not run here).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

STORE_ANSWER_S = 5.0  # how long the store may take to answer after a timeout (it may be gone with rank 0)
POST_EVERY_S = 0.5
TIMEOUT_WORDS = ("timed out", "timeout")  # gloo: "Timed out waiting 10000ms for recv operation to complete"


class StepPosts:
    """Each rank's last finished step in the process group's store and, once a collective has timed out, which
    ranks are still there to say so. Every store call runs in a daemon thread: a store whose server stopped (rank 0
    stopped) does not answer a set, whatever its timeout, and must never hang the rank that asks."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world, self.latest = rank, world, None
        self.store = dist.distributed_c10d._get_default_store() if world > 1 else None
        self.poster, self._stop = None, threading.Event()

    def post(self, step: int) -> None:
        """Record `step`; a daemon thread sends the newest one every POST_EVERY_S (no store round trip per step)."""
        self.latest = step
        if self.poster is None and self.store is not None:
            self.poster = threading.Thread(target=self._send_posts, daemon=True, name="cgc-step-posts")
            self.poster.start()
            atexit.register(self.close)  # whatever way the rank exits, unless by os._exit

    def close(self) -> None:
        """Stop posting and wait for the poster to leave the store. A daemon thread still inside a store call when
        the interpreter finalizes aborts the process as the call returns ("terminate called without an active
        exception": the thread is ended while torch's C++ frame retakes the GIL), turning a clean exit into -6."""
        self._stop.set()
        if self.poster is not None:
            self.poster.join(STORE_ANSWER_S)

    def _send_posts(self) -> None:
        sent = None
        while not self._stop.is_set():
            if self.latest != sent:
                sent = self.latest
                try:
                    self.store.set(f"cgc/step/{self.rank}", str(sent))
                except RuntimeError:  # the store is gone (its rank ended or stopped): nothing left to post to
                    return
            self._stop.wait(POST_EVERY_S)

    def _until_set(self, keys: list[str], seconds: float) -> None:
        """Poll the store until every key of `keys` is set, at most `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.store.check(keys):
            time.sleep(0.2)

    def roll_call(self, window_s: float) -> Roll:
        """After a timeout: say "alive", give the others `window_s` to say it too (their collectives time out at
        about the same moment), read who did and their last steps, then say "done". A roll call that does not
        finish within `window_s` + STORE_ANSWER_S comes back incomplete: nothing of what it half read."""
        if self.store is None:
            return Roll(True, [self.rank], {}, complete=True)
        answered, finished = [], []  # appended by the worker thread (atomic), which may outlive the wait

        def ask():
            self.store.set_timeout(timedelta(seconds=STORE_ANSWER_S))  # a stopped server: its reads fail, not hang
            self.store.set(f"cgc/alive/{self.rank}", "1")  # sent without waiting for an answer: the read below waits
            answered.append(self.store.check([f"cgc/alive/{self.rank}"]))
            alive = [f"cgc/alive/{r}" for r in range(self.world)]
            self._until_set(alive, window_s)
            steps = [f"cgc/step/{r}" for r in range(self.world)]
            last_steps = {r: int(self.store.get(steps[r])) for r in range(self.world) if self.store.check([steps[r]])}
            seen = [r for r in range(self.world) if self.store.check([alive[r]])]
            finished.append(Roll(True, seen, last_steps, complete=True))
            self.store.set(f"cgc/done/{self.rank}", "1")

        self._within(ask, window_s + STORE_ANSWER_S)
        return finished[0] if finished else Roll(any(answered), [], {}, complete=False)

    def wait_for(self, ranks: list[int], seconds: float) -> None:
        """Until `ranks` have said "done" (read the store), at most `seconds`: the lowest rank serves the store
        under DeepSpeed's launcher, and must not take it away while another rank still reads it."""
        if self.store is not None:
            done = [f"cgc/done/{r}" for r in ranks]
            self._within(lambda: self._until_set(done, seconds), seconds + STORE_ANSWER_S)

    @staticmethod
    def _within(work, seconds: float) -> None:
        """`work()` in a daemon thread, given up on after `seconds` (a store call may never return) or when the
        store fails (its server gone: what was learnt before stays)."""

        def quietly():
            try:
                work()
            except (RuntimeError, ValueError):  # torch's DistStoreError is a RuntimeError
                pass

        thread = threading.Thread(target=quietly, daemon=True, name="cgc-roll-call")
        thread.start()
        thread.join(seconds)


@dataclasses.dataclass
class Roll:
    store_answered: bool  # False: the store never answered (on ranks > 0: its server, rank 0 under DeepSpeed, stopped)
    alive: list[int]  # the ranks that said "alive" within the window ([] when incomplete)
    last_steps: dict[int, int]  # rank -> its last posted step ({} when incomplete)
    complete: bool  # False: the roll call did not finish in time, and what it learnt is unknown

    def speaker(self, rank: int) -> bool:
        """Whether `rank` prints the message: rank 0 whenever it is there (the lowest rank: a job that ends must
        say why, even when rank 0's own roll call did not finish); rank 1 when the store never answered (rank 0
        stopped with it); otherwise the lowest rank a finished roll call found alive. Two ranks print only when
        the roll calls disagree: rank 0 alive but its store silent to rank 1, or rank 0 saying "alive" too late
        for rank 2's window (rank 2 then names rank 0 as stopped)."""
        if rank == 0:
            return True
        if not self.store_answered:
            return rank == 1
        return self.complete and bool(self.alive) and rank == min(self.alive)


_ARMED: dict = {}  # what end_if_stalled needs to know about the run, set by `arm`


def arm(timeout_s: float, checkpoints: Path) -> None:
    """The run's collective timeout and checkpoint directory, for `end_if_stalled`."""
    _ARMED.update(timeout_s=timeout_s, checkpoints=checkpoints)


def is_timeout(err: BaseException) -> bool:
    """A collective of torch.distributed that waited past the timeout (not any error that mentions a timeout)."""
    text = str(err).lower()
    from_c10d = isinstance(err, dist.DistError) or any(w in text for w in ("gloo", "nccl", "processgroup", "c10d"))
    return isinstance(err, RuntimeError) and from_c10d and any(word in text for word in TIMEOUT_WORDS)


def stalled_message(roll: Roll, world: int, timeout_s: float, last_whole, err: BaseException, rank: int) -> str:
    """Who stopped answering and the last whole checkpoint, in one message (with the error's first line), as
    `rank` (the speaker, alive by definition) tells it."""
    if not roll.store_answered and rank != 0:
        who = "rank 0 stopped answering (the rendezvous store it serves does not answer either)"
    elif not roll.complete:
        who = "a rank stopped answering; which one is not known (the roll call through the store did not finish)"
    else:
        gone = [r for r in range(world) if r not in roll.alive]
        last = ", ".join(f"rank {r}: step {roll.last_steps.get(r, 0)}" for r in gone)
        who = f"rank(s) {gone} stopped answering (last finished {last})" if gone else "every rank is still there"
    saved = f"the last whole checkpoint is {last_whole}" if last_whole else "no checkpoint was saved yet"
    first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return (
        f"a collective waited more than train.collective_timeout_s={timeout_s:g} s: {who}. The job ends here; "
        f"{saved} (resume=latest continues from it). Raise train.collective_timeout_s if the other ranks "
        f"legitimately wait longer (a save, a first compiled step, rank 0 exporting alone). ({first_line})"
    )


def end_if_stalled(err: BaseException) -> None:
    """When `err` is a collective's timeout in an armed run: one rank prints `stalled_message` (`Roll.speaker`),
    and every rank still there ends at once (exit 1; a normal exit would wait on the process group's shutdown,
    which waits on the rank that stopped). Otherwise return."""
    if not _ARMED or not dist.is_initialized() or not is_timeout(err):
        return
    from cgc.training.checkpoint import completed_steps

    rank, world, timeout_s = dist.get_rank(), dist.get_world_size(), _ARMED["timeout_s"]
    posts = StepPosts(rank, world)
    window = min(max(5.0, timeout_s / 2), 60.0)
    roll = posts.roll_call(window)
    if roll.speaker(rank):
        steps = completed_steps(_ARMED["checkpoints"])
        last = _ARMED["checkpoints"] / f"step_{steps[-1]}" if steps else None
        print(f"cgc: {stalled_message(roll, world, timeout_s, last, err, rank)}", file=sys.stderr, flush=True)
        if roll.store_answered:
            posts.wait_for([r for r in roll.alive if r != rank], window)
    os._exit(1)
