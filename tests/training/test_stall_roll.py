"""Who names a stopped rank (cgc.training.stall.Roll.speaker) and what the message says, for the roll calls a
timeout can leave: finished, unfinished in time, or with a store that never answered."""

from cgc.training.stall import Roll, stalled_message


def speakers(roll_of: dict[int, Roll]) -> list[int]:
    return [rank for rank, roll in roll_of.items() if roll.speaker(rank)]


def test_one_speaker_when_every_roll_call_finishes():
    """3 ranks, rank 1 stopped: ranks 0 and 2 both saw 0 and 2 alive; only rank 0 speaks."""
    seen = Roll(True, [0, 2], {0: 4, 1: 2, 2: 4}, complete=True)
    assert speakers({0: seen, 2: seen}) == [0]


def test_rank_0_speaks_even_when_its_roll_call_did_not_finish():
    """Rank 0 must never leave silently: it takes the store (and so the others' reading) with it."""
    unfinished = Roll(True, [], {}, complete=False)
    finished = Roll(True, [0, 2], {0: 4, 1: 2, 2: 4}, complete=True)
    assert speakers({0: unfinished, 2: finished}) == [0]
    message = stalled_message(unfinished, 3, 10, None, RuntimeError("gloo: Timed out waiting 10000ms"), rank=0)
    assert "rank(s) [1, 2] did not answer a roll call that did not finish in time" in message
    assert "rank 0 stopped" not in message and "no checkpoint was saved yet" in message


def test_a_rank_whose_roll_call_broke_off_stays_quiet():
    """Rank 2 lost the store halfway (rank 0 ended): it cannot know who else is there and says nothing."""
    assert not Roll(True, [], {}, complete=False).speaker(2)


def test_rank_1_speaks_when_the_store_never_answered():
    """Rank 0 stopped and the store it serves with it: rank 1 names it, rank 2 stays quiet."""
    silent = Roll(False, [], {}, complete=False)
    assert speakers({1: silent, 2: silent}) == [1]
    message = stalled_message(silent, 3, 10, "ckpt/step_4", RuntimeError("Timed out"), rank=1)
    assert "rank 0 stopped answering" in message and "the last whole checkpoint is ckpt/step_4" in message


def test_the_lowest_rank_alive_speaks_when_rank_0_never_joined_the_roll_call():
    """Rank 0 is hung elsewhere (not in the roll call): rank 2, the lowest alive, names 0 and 1."""
    roll = Roll(True, [2], {0: 3, 1: 2, 2: 4}, complete=True)
    assert roll.speaker(2)
    message = stalled_message(roll, 3, 10, None, RuntimeError("Timed out"), rank=2)
    assert "rank(s) [0, 1] stopped answering (last finished rank 0: step 3, rank 1: step 2)" in message
