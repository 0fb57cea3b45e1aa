"""The comparison's statistics on hand-made scores."""

import numpy as np
import pytest

from cgc.analysis.stats import mean_std, paired_bootstrap


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([0.5, 0.7, 0.9]) == pytest.approx((0.7, 0.2))
    assert mean_std([0.4]) == (0.4, 0.0)


def test_a_constant_difference_has_a_zero_width_interval():
    ours = {"a": np.full((3, 50), 0.8), "b": np.ones((3, 40))}
    theirs = {"a": np.full((3, 50), 0.6), "b": np.full((3, 40), 0.9)}
    result = paired_bootstrap(ours, theirs, resamples=500)
    assert result["difference"] == pytest.approx(0.15)  # mean over tasks of (0.2, 0.1)
    assert result["low"] == pytest.approx(0.15) and result["high"] == pytest.approx(0.15)
    assert result["significant"]


def test_the_interval_matches_the_normal_approximation_and_contains_zero_for_noise():
    rng = np.random.default_rng(1)
    # One seed, 2000 examples, exact-match scores equally likely for both methods: no real difference.
    ours, theirs = rng.integers(0, 2, (1, 2000)), rng.integers(0, 2, (1, 2000))
    result = paired_bootstrap({"t": ours}, {"t": theirs}, resamples=4000)
    d = (ours - theirs).ravel()
    half_width = 1.96 * d.std() / np.sqrt(d.size)
    assert result["difference"] == pytest.approx(d.mean())
    assert result["high"] - result["low"] == pytest.approx(2 * half_width, rel=0.1)
    assert result["low"] < 0 < result["high"] and not result["significant"]


def test_pairing_makes_a_small_consistent_difference_significant():
    # Both methods get the same hard and easy examples; ours is right on 10 % more of them, every seed.
    base = np.tile(np.r_[np.zeros(50), np.ones(50)], (3, 1))
    ours = base.copy()
    ours[:, :10] = 1.0
    result = paired_bootstrap({"t": ours}, {"t": base}, resamples=2000)
    assert result["difference"] == pytest.approx(0.1) and result["low"] > 0 and result["significant"]


def test_seeds_that_disagree_widen_the_interval():
    same = {"t": np.tile(np.r_[np.ones(10), np.zeros(40)], (3, 1))}
    zeros = {"t": np.zeros((3, 50))}
    steady = paired_bootstrap(same, zeros, resamples=2000)
    varied = same["t"].copy()
    varied[0, :] = 0.0  # seed 0 gains nothing, the other two gain 0.2 each
    varied[1, :20] = 1.0
    spread = paired_bootstrap({"t": varied}, zeros, resamples=2000)
    assert (spread["high"] - spread["low"]) > (steady["high"] - steady["low"])


def test_a_seed_moves_every_task_together_so_it_is_drawn_once_for_all_tasks():
    # 9 tasks, 3 seeds; the difference is +0.3 on seed 0 and -0.1 on the others, on every task and example.
    # Resampling the 3 seeds: P(all three draws are seed 0) = 1/27 > 2.5 % and P(none) = 8/27, so the interval
    # runs from -0.1 to +0.3. Drawing seeds per task would average 9 draws and give a far narrower interval.
    effect = np.array([0.3, -0.1, -0.1])[:, None]
    ours = {f"t{i}": np.tile(effect, (1, 50)) for i in range(9)}
    zeros = {task: np.zeros((3, 50)) for task in ours}
    result = paired_bootstrap(ours, zeros, resamples=4000)
    assert result["difference"] == pytest.approx(1 / 30)
    assert result["low"] == pytest.approx(-0.1) and result["high"] == pytest.approx(0.3)
    assert not result["significant"]


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError, match="same tasks"):
        paired_bootstrap({"a": np.ones((1, 3))}, {"b": np.ones((1, 3))})
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap({"a": np.ones((1, 3))}, {"a": np.ones((3, 3))})
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap({"a": np.ones((1, 3)), "b": np.ones((2, 3))}, {"a": np.ones((1, 3)), "b": np.ones((2, 3))})
