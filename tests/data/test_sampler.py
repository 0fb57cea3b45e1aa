"""Property tests of the cluster-aware sampler for world sizes 1-4."""

import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cgc.adapter.task_map import TaskMap
from cgc.data.sampler import LAW, ClusterAwareBatchSampler


def make_sampler(tasks, clusters, *args, **kwargs):
    """A sampler over examples given by task name (the recipes pass the tokenised `task_id` column)."""
    task_map = TaskMap.from_clusters(clusters)
    return ClusterAwareBatchSampler([task_map.id_of(t) for t in tasks], task_map, *args, **kwargs)


@st.composite
def setups(draw):
    num_clusters = draw(st.integers(1, 3))
    clusters, tasks = {}, []
    for c in range(num_clusters):
        names = [f"c{c}t{t}" for t in range(draw(st.integers(1, 3)))]
        clusters[f"c{c}"] = names
        for name in names:
            tasks += [name] * draw(st.integers(0, 30))
    assume(tasks)  # an empty dataset is refused by the constructor (tested below)
    order = draw(st.permutations(range(len(tasks))))
    tasks = [tasks[i] for i in order]
    world = draw(st.integers(1, 4))
    micro = draw(st.integers(1, 4))
    kwargs = dict(
        micro_batch_size=micro,
        world_size=world,
        seed=draw(st.integers(0, 2**16)),
        mixing=draw(st.sampled_from(["proportional", "uniform", "temperature"])),
        drop_last=draw(st.booleans()),
    )
    if draw(st.booleans()):  # batches grouped by length
        kwargs["lengths"] = draw(st.lists(st.integers(1, 50), min_size=len(tasks), max_size=len(tasks)))
    return tasks, clusters, kwargs


def rank_samplers(tasks, clusters, **kwargs):
    return [make_sampler(tasks, clusters, rank=r, **kwargs) for r in range(kwargs["world_size"])]


def test_a_cluster_too_small_for_one_step_is_left_out_with_a_warning():
    tasks = ["a"] * 100 + ["b"] * 3
    with pytest.warns(UserWarning, match=r"clusters \['tiny'\] have fewer than 8 examples"):
        sampler = make_sampler(tasks, {"big": ["a"], "tiny": ["b"]}, 4, world_size=2)
    assert set(sampler.cluster_schedule()) == {"big"} and len(sampler) == 12
    with pytest.raises(ValueError, match="not enough examples for one step of 2 ranks x 4 examples in any cluster"):
        make_sampler(tasks[-3:], {"tiny": ["b"]}, 4, world_size=2)


def can_fill_a_step(tasks, clusters, kwargs) -> bool:
    """Whether some cluster can fill one global step; when none can, the sampler must say so."""
    try:
        make_sampler(tasks, clusters, **kwargs).cluster_schedule()
    except ValueError as err:
        assert "not enough examples for one step" in str(err)
        return False
    return True


def cluster_of(clusters):
    return {t: c for c, ts in clusters.items() for t in ts}


@pytest.mark.filterwarnings("ignore:clusters .* are never sampled")
@settings(max_examples=150, deadline=None)
@given(setups())
def test_ranks_agree_on_cluster_and_examples_repeat_only_in_a_new_pass_over_their_task(setup):
    tasks, clusters, kwargs = setup
    step = kwargs["world_size"] * kwargs["micro_batch_size"]
    sizes = {c: sum(tasks.count(t) for t in ts) for c, ts in clusters.items()}
    if not can_fill_a_step(tasks, clusters, kwargs):
        assert max(sizes.values()) < step  # refused only when no cluster can fill one step
        return
    samplers = rank_samplers(tasks, clusters, **kwargs)
    schedule = samplers[0].cluster_schedule()
    assert set(schedule) <= {c for c, n in sizes.items() if n >= step}  # too-small clusters are never drawn
    per_rank = [list(s) for s in samplers]
    owner = cluster_of(clusters)
    assert all(len(b) == len(schedule) for b in per_rank)
    drawable = sum(n for n in sizes.values() if n >= step)
    assert len(schedule) == drawable // step + (not kwargs["drop_last"] and drawable % step >= kwargs["world_size"])
    uses = Counter()
    for step, batches in enumerate(zip(*per_rank, strict=True)):
        assert len({len(b) for b in batches}) == 1 and len(batches[0]) >= 1  # equal share per rank
        assert len(batches[0]) <= kwargs["micro_batch_size"]
        for batch in batches:
            assert {owner[tasks[i]] for i in batch} == {schedule[step]}  # every rank, the same cluster
        ids = [i for b in batches for i in b]
        if "lengths" not in kwargs:  # a repeat inside a step: only a task with fewer examples than its slots there
            for task, slots in Counter(tasks[i] for i in ids).items():
                assert len({i for i in ids if tasks[i] == task}) == min(slots, tasks.count(task))
        uses.update(ids)
    if "lengths" not in kwargs:  # passes: each example of a task used k or k + 1 times in the epoch
        for task in set(tasks):
            counts = [uses[i] for i, t in enumerate(tasks) if t == task]
            assert max(counts) - min(counts) <= 1
    usage = make_sampler(tasks, clusters, rank=0, **kwargs).epoch_usage()
    assert sum(usage.values()) == sum(uses.values())
    for task, n in usage.items():
        assert n == sum(c for i, c in uses.items() if tasks[i] == task)
    assert all(s.epoch == 1 and s.position == 0 for s in samplers)  # iterating finished the epoch


@pytest.mark.filterwarnings("ignore:clusters .* are never sampled")
@settings(max_examples=60, deadline=None)
@given(setups(), st.integers(0, 40))
def test_state_round_trip_mid_epoch_yields_the_identical_remaining_sequence(setup, cut):
    tasks, clusters, kwargs = setup
    if not can_fill_a_step(tasks, clusters, kwargs):
        return
    for rank in range(kwargs["world_size"]):
        reference = make_sampler(tasks, clusters, rank=rank, **kwargs)
        epoch0, epoch1 = list(reference), list(reference)
        run = make_sampler(tasks, clusters, rank=rank, **kwargs)
        batches = iter(run)
        first = [next(batches) for _ in range(min(cut, len(epoch0)))]
        restored = make_sampler(tasks, clusters, rank=rank, **kwargs)
        restored.load_state_dict(run.state_dict())
        assert first + list(restored) == epoch0
        assert list(restored) == epoch1


def test_a_state_moves_to_another_world_size_when_the_global_micro_batch_is_the_same():
    # A universal checkpoint of 2 ranks x 4 examples resumed on 1 rank x 8: the same global batches follow.
    tasks = ["a"] * 40 + ["b"] * 30 + ["c"] * 30
    clusters = {"x": ["a", "b"], "y": ["c"]}
    two = rank_samplers(tasks, clusters, micro_batch_size=4, world_size=2, seed=3)
    streams = [iter(s) for s in two]
    for _ in range(3):
        for stream in streams:
            next(stream)
    one = make_sampler(tasks, clusters, 8, world_size=1, seed=3)
    one.load_state_dict(two[0].state_dict())
    rest_two = [a + b for a, b in zip(*streams, strict=True)]  # rank 0's half, then rank 1's
    assert list(one) == rest_two and rest_two
    other = make_sampler(tasks, clusters, 4, world_size=1, seed=3)
    with pytest.raises(ValueError, match="saved with world_size 2 and schedule layout"):
        other.load_state_dict(two[0].state_dict())


@pytest.mark.parametrize("mixing", ["proportional", "uniform", "temperature"])
def test_cluster_and_task_frequencies_follow_the_mixing_law(mixing):
    counts = {"a": 4000, "b": 1000, "c": 250, "d": 1000}
    clusters = {"big": ["a", "b"], "small": ["c"], "mid": ["d"]}
    tasks = [t for t, n in counts.items() for _ in range(n)]
    sampler = make_sampler(tasks, clusters, micro_batch_size=2, world_size=2, mixing=mixing, temperature=2.0)

    def law(ns):
        w = {k: n if mixing == "proportional" else 1.0 if mixing == "uniform" else n**0.5 for k, n in ns.items()}
        return {k: v / sum(w.values()) for k, v in w.items()}

    by_task = law(counts)  # the law is over tasks; a cluster's share is the sum of its tasks'
    expected = {c: sum(by_task[t] for t in ts) for c, ts in clusters.items()}
    steps, used = [], {t: 0 for t in counts}
    for epoch in range(4):
        sampler.set_epoch(epoch)
        steps += sampler.cluster_schedule()
        used = {t: used[t] + n for t, n in sampler.epoch_usage().items()}
    for cluster, p in expected.items():
        observed = steps.count(cluster) / len(steps)
        assert abs(observed - p) < 4 * np.sqrt(p * (1 - p) / len(steps)), (cluster, observed, p)
    # Inside 'big', the slots go to tasks a and b by the same law.
    p_a = law({"a": 4000, "b": 1000})["a"]
    drawn = used["a"] + used["b"]
    assert abs(used["a"] / drawn - p_a) < 4 * np.sqrt(p_a * (1 - p_a) / drawn), (used, p_a)


@pytest.mark.parametrize("mixing", ["uniform", "temperature"])
def test_a_tasks_share_of_the_examples_does_not_depend_on_the_cluster_map(mixing):
    """The map says which experts tasks share, not how much data each gets: one cluster of nine tasks and a 7 + 1 + 1
    map draw each task equally often (a law over clusters gave each single task 7x a task of the seven under
    `uniform`, 2.6x under `temperature`). Equal tasks: none runs out before the epoch ends."""
    tasks = [f"t{i}" for i in range(9) for _ in range(300)]
    maps = {"one": {"all": [f"t{i}" for i in range(9)]}}
    maps["split"] = {"seven": [f"t{i}" for i in range(7)], "alone7": ["t7"], "alone8": ["t8"]}
    shares = {}
    for name, clusters in maps.items():
        sampler = make_sampler(tasks, clusters, micro_batch_size=4, mixing=mixing, temperature=2.0)
        used = np.zeros(9)
        for epoch in range(6):
            sampler.set_epoch(epoch)
            used += [sampler.epoch_usage()[f"t{i}"] for i in range(9)]
        shares[name] = used / used.sum()
    for name, share in shares.items():
        assert np.abs(share - 1 / 9).max() < 0.02, (name, share.round(3))


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("mixing", ["uniform", "temperature"])
def test_a_small_task_keeps_its_share_beside_a_large_one_in_its_cluster(mixing, grouped):
    """4000 + 100 examples: the small task gets the law's share (50 % uniform, 13.7 % temperature 2) in a cluster of
    its own and beside the large one. Handing its slots to the large task once it was used up gave it 2.4 % there
    under every mixing (measured), the share of `proportional`."""
    tasks = ["a"] * 4000 + ["b"] * 100
    lengths = np.random.default_rng(0).integers(1, 50, len(tasks)).tolist() if grouped else None
    law = 0.5 if mixing == "uniform" else 100**0.5 / (100**0.5 + 4000**0.5)
    for clusters in ({"x": ["a", "b"]}, {"x": ["a"], "y": ["b"]}):
        sampler = make_sampler(tasks, clusters, micro_batch_size=4, mixing=mixing, temperature=2.0, lengths=lengths)
        used = {"a": 0, "b": 0}
        for epoch in range(3):
            sampler.set_epoch(epoch)
            used = {t: n + sampler.epoch_usage()[t] for t, n in used.items()}
        share = used["b"] / (used["a"] + used["b"])
        assert abs(share - law) < 0.1 * law, (clusters, share, law)
        assert len(sampler) == len(tasks) // 4  # an epoch: as many examples as the data has


def test_a_task_smaller_than_its_slots_in_one_step_is_repeated_not_a_stall():
    """3 examples beside 1000 under `uniform`: about 4 of every 8 slots. Each epoch is still the data's size."""
    tasks = ["a"] * 1000 + ["b"] * 3
    sampler = make_sampler(tasks, {"x": ["a", "b"]}, micro_batch_size=8, mixing="uniform")
    assert len(sampler) == 1003 // 8
    usage = sampler.epoch_usage()
    assert abs(usage["b"] / sum(usage.values()) - 0.5) < 0.05
    assert sampler.examples_per_task(3 * len(sampler))["b"] == pytest.approx(3 * usage["b"], rel=0.1)


@pytest.mark.parametrize("grouped", [False, True])
def test_an_upsampled_task_repeats_no_example_inside_a_step_while_it_has_enough(grouped):
    """20 examples beside 1000 under `uniform`: ~4 slots a step, 12 passes an epoch, yet no step holds a copy; length
    grouping included (a pool of 16 units would hold ~64 of the 20: copies of one length, side by side)."""
    tasks = ["a"] * 1000 + ["b"] * 20
    lengths = np.random.default_rng(0).integers(1, 50, len(tasks)).tolist() if grouped else None
    steps = list(make_sampler(tasks, {"x": ["a", "b"]}, micro_batch_size=8, mixing="uniform", lengths=lengths))
    assert sum(tasks[i] == "b" for b in steps for i in b) > 10 * 20
    assert all(len(set(b)) == len(b) for b in steps)


def test_a_state_of_an_earlier_sampler_version_resumes_with_a_warning_that_says_what_differs():
    tasks = ["a"] * 20 + ["b"] * 20 + ["c"] * 20

    def resumed(clusters, mixing, law):
        sampler = make_sampler(tasks, clusters, micro_batch_size=2, mixing=mixing)
        state = sampler.state_dict()
        state["layout"] = {k: v for k, v in state["layout"].items() if k != "law"} | ({"law": law} if law else {})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sampler.load_state_dict(state)
        return " ".join(str(w.message) for w in caught)

    two_and_one = {"x": ["a", "b"], "y": ["c"]}  # uniform: 1/2 and 1/2 by cluster, 2/3 and 1/3 by task
    assert "drew clusters by their own size" in resumed(two_and_one, "uniform", None)
    for clusters, mixing, law in ((two_and_one, "proportional", None), (two_and_one, "uniform", "tasks")):
        message = resumed(clusters, mixing, law)  # the same cluster shares; epochs ended when a cluster ran short
        assert "ended an epoch when the drawn cluster ran short" in message and "own size" not in message
    assert resumed(two_and_one, "uniform", LAW) == ""  # a state of this version loads silently


def test_optimizer_step_mode_keeps_one_cluster_for_all_accumulation_micro_steps():
    tasks = ["a"] * 300 + ["b"] * 300 + ["c"] * 300
    clusters = {"x": ["a"], "y": ["b"], "z": ["c"]}
    sampler = make_sampler(tasks, clusters, 2, world_size=2, cluster_per="optimizer_step", grad_accum=4)
    schedule = sampler.cluster_schedule()
    assert len(schedule) == 900 // (2 * 2 * 4) * 4  # an epoch: the data's size in whole units of 4 micro-steps
    blocks = [schedule[i : i + 4] for i in range(0, len(schedule), 4)]
    assert all(len(set(b)) == 1 for b in blocks)
    assert len({b[0] for b in blocks}) == 3
    micro = make_sampler(tasks, clusters, 2, world_size=2, grad_accum=4).cluster_schedule()
    assert any(len(set(micro[i : i + 4])) > 1 for i in range(0, len(micro) - 4, 4))  # default: per micro-step


def test_bad_arguments_are_reported_together():
    with pytest.raises(ValueError) as err:
        make_sampler(["a"], {"x": ["a"]}, 0, world_size=2, rank=2, mixing="zipf", cluster_per="epoch")
    message = str(err.value)
    for part in ("micro_batch_size", "rank must be", "mixing must be", "cluster_per must be"):
        assert part in message
    with pytest.raises(ValueError, match=r"task id 1 out of range: this model has 1 tasks"):
        ClusterAwareBatchSampler([0, 1], TaskMap.from_clusters({"x": ["a"]}), 1)
    sampler = make_sampler(["a"] * 10, {"x": ["a"]}, 1, world_size=2, seed=1)
    with pytest.raises(ValueError, match="saved with seed 2"):
        sampler.load_state_dict({"seed": 2, "epoch": 0, "position": 0})
    with pytest.raises(ValueError, match="saved with world_size 4 and schedule layout None"):
        sampler.load_state_dict({"seed": 1, "epoch": 0, "position": 0, "world_size": 4})


def test_batch_cluster_names_the_cluster_of_the_batch_just_yielded():
    clusters = {"x": ["a", "b"], "y": ["c"]}
    tasks = ["a"] * 20 + ["b"] * 20 + ["c"] * 40
    sampler = make_sampler(tasks, clusters, 4, world_size=2, rank=1)
    owner = cluster_of(clusters)
    seen = set()
    for batch in sampler:
        assert {owner[tasks[i]] for i in batch} == {sampler.batch_cluster}
        seen.add(sampler.batch_cluster)
    assert seen == {"x", "y"}


def padding_fraction(batches, lengths) -> float:
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def test_length_grouping_cuts_padding_and_keeps_the_sampler_contract():
    rng = np.random.default_rng(0)
    tasks = ["a"] * 300 + ["b"] * 300 + ["c"] * 400
    clusters = {"x": ["a", "b"], "y": ["c"]}
    lengths = (20 + rng.pareto(1.5, len(tasks)) * 10).astype(int).tolist()  # long-tailed, as real prompts are
    setup = dict(micro_batch_size=4, world_size=2, seed=5)
    plain = [b for s in rank_samplers(tasks, clusters, **setup) for b in s]
    grouped_ranks = rank_samplers(tasks, clusters, **setup, lengths=lengths)
    schedule = grouped_ranks[0].cluster_schedule()
    grouped = [list(s) for s in grouped_ranks]
    grouped_padding = padding_fraction([b for r in grouped for b in r], lengths)
    assert grouped_padding < 0.7 * padding_fraction(plain, lengths)  # measured: 0.31 against 0.52
    owner = cluster_of(clusters)
    for step, batches in enumerate(zip(*grouped, strict=True)):
        assert all({owner[tasks[i]] for i in b} == {schedule[step]} for b in batches)  # one cluster, all ranks
    ids = [i for r in grouped for b in r for i in b]
    # An epoch is the data's size; temperature 2 draws a and b (300 each) ~317 times: a second pass starts for them
    assert len(ids) == len(tasks) and max(Counter(ids).values()) <= 2
    assert set(schedule) == {"x", "y"}
    # A mid-epoch state resumes to the same remaining batches.
    run = make_sampler(tasks, clusters, **setup, rank=1, lengths=lengths)
    stream = iter(run)
    first = [next(stream) for _ in range(7)]
    restored = make_sampler(tasks, clusters, **setup, rank=1, lengths=lengths)
    restored.load_state_dict(run.state_dict())
    assert first + list(restored) == grouped[1]
