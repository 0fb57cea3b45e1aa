"""A rank that stops answering (hung, stopped, its node gone) ends the job with one message, not a silent wait.

Every collective of the run has a timeout (train.collective_timeout_s, given to the process group and the side
group). Each rank posts its last finished step to the process group's key-value store (`StepPosts`). When a
collective times out, the ranks still there say so in the store and wait a moment for each other (their
collectives time out at about the same time); the ranks that never say it are the ones that stopped, named with
their last step by the lowest rank still there. The store is served by rank 0 under DeepSpeed's launcher (by
torchrun's agent under torchrun): when rank 0 is the one that stopped, the store does not answer either, and the
message says so. On GPUs NCCL's own watchdog may end a rank first with its message (TORCH_NCCL_ASYNC_ERROR_HANDLING).
"""

from __future__ import annotations

import os
import sys
import threading
import time
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
        self.poster = None

    def post(self, step: int) -> None:
        """Record `step`; a daemon thread sends the newest one every POST_EVERY_S (no store round trip per step)."""
        self.latest = step
        if self.poster is None and self.store is not None:
            self.poster = threading.Thread(target=self._send_posts, daemon=True, name="cgc-step-posts")
            self.poster.start()

    def _send_posts(self) -> None:
        sent = None
        while True:
            if self.latest != sent:
                sent = self.latest
                self.store.set(f"cgc/step/{self.rank}", str(sent))
            time.sleep(POST_EVERY_S)

    def roll_call(self, window_s: float) -> tuple[list[int], dict[int, int]] | None:
        """After a timeout: say "alive", give the others `window_s` to say it too (their collectives time out at
        about the same moment). -> (the ranks that said it, rank -> last posted step); None: the store does not
        answer."""
        if self.store is None:
            return [self.rank], {}
        answer = []

        def ask():
            self.store.set(f"cgc/alive/{self.rank}", "1")
            alive = [f"cgc/alive/{r}" for r in range(self.world)]
            deadline = time.monotonic() + window_s
            while time.monotonic() < deadline and not self.store.check(alive):
                time.sleep(0.2)
            steps = [f"cgc/step/{r}" for r in range(self.world)]
            answer.append((
                [r for r in range(self.world) if self.store.check([alive[r]])],
                {r: int(self.store.get(steps[r])) for r in range(self.world) if self.store.check([steps[r]])},
            ))  # fmt: skip

        asking = threading.Thread(target=ask, daemon=True, name="cgc-roll-call")
        asking.start()
        asking.join(window_s + STORE_ANSWER_S)
        return answer[0] if answer else None


def is_timeout(err: BaseException) -> bool:
    """A collective that waited past the timeout."""
    return isinstance(err, RuntimeError) and any(word in str(err).lower() for word in TIMEOUT_WORDS)


def stalled_message(roll: tuple[list[int], dict[int, int]] | None, world: int, timeout_s: float, last_whole) -> str:
    """Who stopped answering (`roll`: StepPosts.roll_call's answer) and the last whole checkpoint, in one message."""
    if roll is None:
        who = "rank 0 stopped answering (the rendezvous store it serves does not answer either)"
    else:
        alive, steps = roll
        gone = [r for r in range(world) if r not in alive]
        last = ", ".join(f"rank {r}: step {steps.get(r, 0)}" for r in gone)
        who = f"rank(s) {gone} stopped answering (last finished {last})" if gone else "every rank is still there"
    saved = f"the last whole checkpoint is {last_whole}" if last_whole else "no checkpoint was saved yet"
    return (
        f"a collective waited more than train.collective_timeout_s={timeout_s:g} s: {who}. The job ends here; "
        f"{saved} (resume=latest continues from it). Raise train.collective_timeout_s if a save or a first step "
        "legitimately takes longer"
    )


def end_if_stalled(err: BaseException, timeout_s: float, checkpoints: Path) -> None:
    """When `err` is a collective's timeout: the lowest rank still there prints `stalled_message`, and every rank
    still there ends at once (exit 1; a normal exit would wait on the process group's shutdown, which waits on the
    rank that stopped). Otherwise return."""
    if not is_timeout(err):
        return
    from cgc.training.checkpoint import completed_steps

    rank, world = dist.get_rank(), dist.get_world_size()
    roll = StepPosts(rank, world).roll_call(window_s=min(max(5.0, timeout_s / 2), 60.0))
    if roll is None or rank == min(roll[0]):
        steps = completed_steps(checkpoints)
        last = checkpoints / f"step_{steps[-1]}" if steps else None
        print(f"cgc: {stalled_message(roll, world, timeout_s, last)}", file=sys.stderr, flush=True)
    os._exit(1)
