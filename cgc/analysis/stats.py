"""Statistics of the comparison: mean ± std over seeds, and a paired bootstrap interval of a difference in
mean score over eval examples × seeds (the same examples and seeds scored by two methods)."""

from __future__ import annotations

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def paired_bootstrap(
    ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], resamples: int = 10_000, seed: int = 0
) -> dict:
    """95 % percentile interval of mean-over-tasks(ours − theirs).

    `ours[task]`, `theirs[task]`: per-example scores, shape (seeds, examples), row s and column i being the same
    seed and eval example for both methods (that pairing is what makes the interval tight). Each resample draws
    the seeds with replacement (once: a seed is a run of every task) and, per task, the examples with
    replacement, so the interval covers both which examples were drawn and which seeds.
    -> {"difference", "low", "high", "significant"}; significant means the interval leaves out 0."""
    if set(ours) != set(theirs) or not ours:
        raise ValueError(f"the two methods must be scored on the same tasks, got {sorted(ours)} and {sorted(theirs)}")
    rng = np.random.default_rng(seed)
    diffs = {}
    for task in ours:
        a, b = np.asarray(ours[task], dtype=float), np.asarray(theirs[task], dtype=float)
        if a.shape != b.shape or a.ndim != 2 or a.size == 0:
            raise ValueError(f"{task}: scores must be (seeds, examples) arrays of the same shape")
        diffs[task] = a - b  # (S, N)
    seeds = {d.shape[0] for d in diffs.values()}
    if len(seeds) != 1:
        raise ValueError(f"every task must have the same seeds, got {sorted(seeds)} rows")
    (seeds,) = seeds
    # A seed is one run of every task: drawn once per resample for all tasks. (B, S) counts.
    seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=resamples)
    total = np.zeros(resamples)
    for d in diffs.values():
        examples = d.shape[1]
        example_counts = rng.multinomial(examples, np.full(examples, 1 / examples), size=resamples)  # (B, N)
        total += np.einsum("bs,sn,bn->b", seed_counts, d, example_counts) / (seeds * examples)
    observed = float(np.mean([d.mean() for d in diffs.values()]))
    total /= len(ours)
    low, high = np.percentile(total, [2.5, 97.5])
    return {
        "difference": observed,
        "low": float(low),
        "high": float(high),
        "significant": bool(low > 0 or high < 0),
    }
