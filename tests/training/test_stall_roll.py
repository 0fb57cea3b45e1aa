"""Who names a stopped rank (cgc.training.stall) and what the message says, for the roll calls a timeout can
leave: finished, unfinished in time, or with a store that never answered."""

import threading

import torch.distributed as dist

from cgc.training import stall
from cgc.training.stall import Roll, StepPosts, stalled_message

TIMEOUT = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:129] Timed out waiting 10000ms for recv")


def store_with(keys: dict[str, str]):
    """torch's in-memory store (the API of the process group's TCPStore) holding `keys`."""
    store = dist.HashStore()
    for key, value in keys.items():
        store.set(key, value)
    return store


class HangingGets:
    """`store`, except that a get never answers until released (a server that stalls halfway)."""

    def __init__(self, store):
        self.store, self.released = store, threading.Event()

    def __getattr__(self, name):
        return getattr(self.store, name)

    def get(self, key):
        self.released.wait()
        return self.store.get(key)


def posts_of(rank: int, world: int, store) -> StepPosts:
    posts = StepPosts(rank, 1)  # no process group here: the store is given
    posts.world, posts.store = world, store
    return posts


def test_a_finished_roll_call_names_the_silent_rank_and_its_last_step():
    """3 ranks, rank 1 stopped after step 2: rank 0's roll call sees 0 and 2, reads every posted step, says done."""
    store = store_with({"cgc/alive/2": "1", "cgc/step/0": "4", "cgc/step/1": "2", "cgc/step/2": "4"})
    roll = posts_of(0, 3, store).roll_call(window_s=0.3)
    assert roll == Roll(True, [0, 2], {0: 4, 1: 2, 2: 4}, complete=True)
    assert store.check(["cgc/done/0"]) and roll.speaker(0) and not roll.speaker(2)
    message = stalled_message(roll, 3, 10, "ckpt/step_4", TIMEOUT, rank=0)
    assert "rank(s) [1] stopped answering (last finished rank 1: step 2)" in message
    assert "the last whole checkpoint is ckpt/step_4" in message and "Timed out waiting 10000ms" in message


def test_a_roll_call_that_does_not_finish_in_time_comes_back_incomplete(monkeypatch):
    """The store stops answering halfway: the roll call gives up after its window plus STORE_ANSWER_S and
    returns nothing it half read; rank 0 still speaks (saying it does not know who), rank 2 stays quiet."""
    monkeypatch.setattr(stall, "STORE_ANSWER_S", 0.3)
    store = HangingGets(store_with({"cgc/alive/2": "1", "cgc/step/1": "2"}))
    roll = posts_of(0, 3, store).roll_call(window_s=0.3)
    store.released.set()  # let the abandoned worker end
    assert roll == Roll(True, [], {}, complete=False)
    assert roll.speaker(0) and not roll.speaker(2)
    message = stalled_message(roll, 3, 10, None, TIMEOUT, rank=0)
    assert "which one is not known" in message and "no checkpoint was saved yet" in message
    assert "rank(s)" not in message  # names no rank, alive or not


def test_rank_1_speaks_when_the_store_never_answered():
    """Rank 0 stopped and the store it serves with it: rank 1 names it, rank 2 stays quiet."""
    silent = Roll(False, [], {}, complete=False)
    assert [rank for rank in (1, 2) if silent.speaker(rank)] == [1]
    message = stalled_message(silent, 3, 10, "ckpt/step_4", TIMEOUT, rank=1)
    assert "rank 0 stopped answering" in message and "the last whole checkpoint is ckpt/step_4" in message


def test_the_lowest_rank_alive_speaks_when_rank_0_never_joined_the_roll_call():
    """Rank 0 is hung elsewhere (not in the roll call): rank 2's finished roll call finds only itself; it speaks."""
    store = store_with({"cgc/step/0": "3", "cgc/step/1": "2", "cgc/step/2": "4"})
    roll = posts_of(2, 3, store).roll_call(window_s=0.3)
    assert roll.complete and roll.alive == [2] and roll.speaker(2)
    message = stalled_message(roll, 3, 10, None, TIMEOUT, rank=2)
    assert "rank(s) [0, 1] stopped answering (last finished rank 0: step 3, rank 1: step 2)" in message


def test_an_unfinished_roll_call_keeps_every_rank_but_0_quiet():
    """A rank > 0 that lost the store halfway cannot know who else is there: it says nothing."""
    unfinished = Roll(True, [], {}, complete=False)
    assert [rank for rank in (0, 1, 2) if unfinished.speaker(rank)] == [0]
