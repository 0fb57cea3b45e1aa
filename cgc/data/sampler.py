"""Cluster-aware distributed batch sampler.

Every micro-step, all ranks run the same cluster: under ZeRO-3 each rank must touch the same parameters in
the same order or the collectives hang, and CGC-LoRA's parameters are grouped by cluster. The whole epoch's
schedule is drawn from a generator seeded only by (seed, epoch), so every rank computes the same schedule
without communicating; rank k takes the k-th micro-batch of each global step.

Mixing. The law is over tasks: task t's share of the examples is p_t ∝ w(n_t), where n is the number of
examples and w(n) = n (proportional), 1 (uniform) or n^(1/T) (temperature). A cluster is drawn for each
scheduling unit (a micro-step, or with cluster_per="optimizer_step" the grad_accum micro-steps of one optimizer
step) with probability p_c = sum of its tasks' p_t, and inside the cluster each slot draws a task ∝ w(n_t); a
task whose examples are used up gives its slots to the cluster's other tasks. So, while every task has unused
examples, how often a task is trained does not depend on the cluster map (the map decides which experts tasks
share, not how much data each gets). A law over clusters (p_c ∝ w(n_c), before 2026-12-07) gave the tasks of a
small cluster far more steps than those of a large one under `uniform` or `temperature` (a 7 + 1 + 1 map under
`uniform`: 1/21 of the steps to each task of the seven, 1/3 to each single task). Two effects still tie a task's
share to the map: a task used up inside a shared cluster hands its slots to the others (the mix drifts toward
`proportional` until the epoch ends), while alone it ends the epoch; and a cluster too small for one unit is
never drawn, where the same task inside a larger cluster would be.
Examples of each task are taken in a shuffled order, without replacement. The epoch ends at the first unit
whose cluster has fewer unused examples than the unit needs, so the cluster law holds over the whole epoch
and no example is used twice in an epoch. A cluster too small to fill even one unit is never drawn (with a
warning). Each epoch reshuffles, so examples that one
epoch did not reach are drawn in later ones; `epoch_usage()` reports what each epoch used per task.

Length grouping (`lengths` given): when a cluster is drawn and has no grouped steps waiting, the sampler takes
up to POOL_UNITS units' worth of its examples at once (by the same task law), sorts them by length, cuts them
into units of neighbouring lengths and serves those units, in a shuffled order, the next times the cluster is
drawn. Each micro-batch then holds examples of similar length and pays little padding; the cluster law, each
example at most once per epoch and the state are unchanged. Examples waiting in a pool when the epoch ends
count as not reached.

State (`state_dict`): seed, epoch and the number of micro-steps already yielded in the epoch; restoring
recomputes the epoch's schedule and continues exactly where it stopped, also on another number of ranks when
the global micro-batch (ranks x micro_batch_size) is the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from cgc.adapter.errors import CGCError
from cgc.adapter.task_map import TaskMap

MIXINGS = ("proportional", "uniform", "temperature")
CLUSTER_PER = ("micro_step", "optimizer_step")
POOL_UNITS = 16  # units sorted by length together: more, less padding; fewer, less order imposed on the data


def argument_problems(
    micro_batch_size: int, mixing: str, temperature: float, cluster_per: str, grad_accum: int
) -> dict[str, str]:
    """Argument name -> what is wrong with it. The one check of these arguments: the sampler raises on them and
    the recipe config reports them under its own key names before anything loads."""
    problems = {}
    if micro_batch_size < 1:
        problems["micro_batch_size"] = f"must be >= 1, got {micro_batch_size}"
    if mixing not in MIXINGS:
        problems["mixing"] = f"must be one of {MIXINGS}, got {mixing!r}"
    if mixing == "temperature" and not temperature > 0:
        problems["temperature"] = f"must be > 0, got {temperature}"
    if cluster_per not in CLUSTER_PER:
        problems["cluster_per"] = f"must be one of {CLUSTER_PER}, got {cluster_per!r}"
    if grad_accum < 1:
        problems["grad_accum"] = f"must be >= 1, got {grad_accum}"
    return problems


class ClusterAwareBatchSampler:
    """Yields this rank's micro-batches (lists of example indices); `batch_cluster` is the cluster of the one it
    yielded last, the same on every rank.

    task_ids: the task id of every example (the `task_id` column of a tokenised dataset), ids of `task_map`.
    """

    def __init__(
        self,
        task_ids: Sequence[int],
        task_map: TaskMap,
        micro_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        mixing: str = "temperature",
        temperature: float = 2.0,
        drop_last: bool = True,
        cluster_per: str = "micro_step",
        grad_accum: int = 1,
        lengths: Sequence[int] | None = None,
    ):
        found = argument_problems(micro_batch_size, mixing, temperature, cluster_per, grad_accum)
        problems = [f"{name} {message}" for name, message in found.items()]
        if world_size < 1 or not 0 <= rank < world_size:
            problems.append(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        ids = np.asarray(task_ids, dtype=np.int64)
        if lengths is not None and len(lengths) != len(ids):
            problems.append(f"lengths has {len(lengths)} entries for {len(ids)} examples")
        if problems:
            raise CGCError("invalid ClusterAwareBatchSampler arguments", problems)
        # Token count of each example, when batches are to be grouped by length (None: not grouped).
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.task_of_example = ids
        if ids.size:
            task_map.name_of(int(ids.min()) if ids.min() < 0 else int(ids.max()))  # raises for an id out of range
        self.task_map = task_map
        self.clusters = {c: list(task_map.tasks_of(c)) for c in task_map.clusters}
        self.micro_batch_size, self.world_size, self.rank, self.seed = micro_batch_size, world_size, rank, seed
        self.mixing, self.temperature, self.drop_last = mixing, temperature, drop_last
        # Micro-steps that share one drawn cluster.
        self.unit_steps = grad_accum if cluster_per == "optimizer_step" else 1
        self.examples_of_task: dict[str, np.ndarray] = {
            task: np.flatnonzero(ids == task_id) for task_id, task in enumerate(task_map.tasks)
        }
        # Clusters and tasks without examples are never drawn.
        self.task_weights = {
            c: {t: self._weight(len(self.examples_of_task[t])) for t in tasks if len(self.examples_of_task[t])}
            for c, tasks in self.clusters.items()
        }
        sizes = {c: sum(len(self.examples_of_task[t]) for t in tw) for c, tw in self.task_weights.items()}
        if not any(sizes.values()):
            raise ValueError("no examples to sample from")
        # A cluster with fewer examples than one scheduling unit could never fill it, and drawing it would end
        # every epoch at once: leave it out, loudly.
        unit = world_size * micro_batch_size * self.unit_steps
        self.cluster_weights = {c: sum(self.task_weights[c].values()) for c, n in sizes.items() if n >= unit}
        # The law before 2026-12-07 (a cluster by its own size): a state saved under it resumes exactly only where
        # both laws give every cluster the same share.
        self.old_law_agrees = same_shares(
            {c: self._weight(sizes[c]) for c in self.cluster_weights}, self.cluster_weights
        )
        accum = f" x {grad_accum} accumulation steps" if self.unit_steps > 1 else ""
        if not self.cluster_weights:
            raise ValueError(
                f"not enough examples for one step of {world_size} ranks x {micro_batch_size} examples{accum} "
                f"in any cluster (cluster sizes: {sizes})"
            )
        too_small = sorted(c for c, n in sizes.items() if 0 < n < unit)
        if too_small:
            warnings.warn(
                f"clusters {too_small} have fewer than {unit} examples "
                f"({world_size} ranks x {micro_batch_size} examples{accum}) and are never sampled",
                stacklevel=2,
            )
        self.epoch, self.position = 0, 0
        self._schedule: list[tuple[str, np.ndarray]] | None = None  # (cluster, global micro-batch) per micro-step
        self._usage: dict[str, int] = {}
        self.batch_cluster: str | None = None  # the cluster of the micro-batch yielded last

    def _weight(self, n: int) -> float:
        if self.mixing == "proportional":
            return float(n)
        if self.mixing == "uniform":
            return 1.0 if n else 0.0
        return float(n) ** (1.0 / self.temperature)

    # ---- the schedule ------------------------------------------------------------------------------
    def _build_schedule(self, epoch: int) -> tuple[list[tuple[str, np.ndarray]], dict[str, int]]:
        rng = np.random.default_rng([self.seed, epoch])
        queues = {t: list(rng.permutation(ix)) for t, ix in self.examples_of_task.items()}
        names = list(self.cluster_weights)
        p = np.array([self.cluster_weights[c] for c in names])
        p = p / p.sum()
        per_step = self.world_size * self.micro_batch_size
        unit = per_step * self.unit_steps
        schedule, usage = [], {t: 0 for t in self.examples_of_task}
        pools: dict[str, list[np.ndarray]] = {c: [] for c in names}  # length-grouped units waiting, per cluster
        while True:
            cluster = names[rng.choice(len(names), p=p)]
            tasks = list(self.task_weights[cluster])
            left = np.array([len(queues[t]) for t in tasks])
            if not pools[cluster] and left.sum() < unit:  # the drawn cluster is used up: the epoch ends here
                if not self.drop_last:
                    schedule += self._last_partial_step(cluster, queues, usage)
                return schedule, usage
            if self.lengths is None:
                picked = self._take(rng, cluster, tasks, queues, left, unit)
                rng.shuffle(picked)  # spread the tasks over ranks and micro-steps
            else:
                if not pools[cluster]:
                    units = min(POOL_UNITS, int(left.sum()) // unit)
                    taken = self._take(rng, cluster, tasks, queues, left, unit * units)
                    by_length = taken[np.argsort(self.lengths[taken], kind="stable")]
                    pools[cluster] = list(by_length.reshape(units, unit))
                    rng.shuffle(pools[cluster])  # not shortest first: no curriculum by length
                picked = pools[cluster].pop()  # neighbouring lengths, in order: each rank gets a similar slice
            for task_id, n in zip(*np.unique(self.task_of_example[picked], return_counts=True), strict=True):
                usage[self.task_map.name_of(int(task_id))] += int(n)
            schedule += [(cluster, step) for step in picked.reshape(self.unit_steps, per_step)]

    def _take(self, rng, cluster: str, tasks: list[str], queues, left: np.ndarray, size: int) -> np.ndarray:
        """`size` unused examples of the cluster's tasks, the slots drawn by the task law."""
        counts = self._task_counts(rng, cluster, tasks, left, size)
        return np.array([queues[t].pop() for t, n in zip(tasks, counts, strict=True) for _ in range(n)])

    def _task_counts(self, rng, cluster: str, tasks: list[str], left: np.ndarray, unit: int) -> np.ndarray:
        """How many of the unit's slots go to each task: drawn by the task law among tasks with unused examples."""
        law = np.array([self.task_weights[cluster][t] for t in tasks])
        counts = np.bincount(rng.choice(len(tasks), size=unit, p=law / law.sum()), minlength=len(tasks))
        if (counts <= left).all():
            return counts
        # Some task ran short: draw slot by slot, each time only among tasks that still have examples.
        counts = np.zeros(len(tasks), dtype=np.int64)
        for _ in range(unit):
            w = law * (counts < left)
            counts[rng.choice(len(tasks), p=w / w.sum())] += 1
        return counts

    def _last_partial_step(self, cluster, queues, usage) -> list[tuple[str, np.ndarray]]:
        """drop_last=False: one last step with what is left of the cluster, split evenly over the ranks."""
        left = [i for t in self.task_weights[cluster] for i in queues[t]]
        per_rank = min(self.micro_batch_size, len(left) // self.world_size)
        if per_rank == 0:
            return []
        taken = np.array(left[: per_rank * self.world_size], dtype=np.int64)
        for t in self.task_weights[cluster]:
            usage[t] += int(np.isin(taken, self.examples_of_task[t]).sum())
        return [(cluster, taken)]

    def _ensure_schedule(self) -> list[tuple[str, np.ndarray]]:
        # Never empty: every cluster that can be drawn holds at least one unit of examples.
        if self._schedule is None:
            self._schedule, self._usage = self._build_schedule(self.epoch)
        return self._schedule

    # ---- iteration ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Micro-steps in the current epoch."""
        return len(self._ensure_schedule())

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's micro-batches (lists of example indices) for the rest of the current epoch."""
        schedule = self._ensure_schedule()
        while self.position < len(schedule):
            self.batch_cluster, step = schedule[self.position]
            self.position += 1
            share = len(step) // self.world_size
            yield step[self.rank * share : (self.rank + 1) * share].tolist()
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position, self._schedule = epoch, 0, None

    def cluster_schedule(self) -> list[str]:
        """The cluster of every micro-step of the current epoch (identical on every rank)."""
        return [cluster for cluster, _ in self._ensure_schedule()]

    def epoch_usage(self) -> dict[str, int]:
        """Examples of each task the current epoch's schedule uses (over all ranks)."""
        self._ensure_schedule()
        return dict(self._usage)

    def examples_per_task(self, micro_steps: int) -> dict[str, int]:
        """Examples of each task the first `micro_steps` micro-steps of the run draw (over all ranks and epochs, from
        epoch 0; the state of this sampler is left as it is): what each task, and each task's own experts, saw."""
        counts = dict.fromkeys(self.task_map.tasks, 0)
        epoch = 0
        while micro_steps > 0:
            schedule, _ = self._build_schedule(epoch)
            for _, step in schedule[:micro_steps]:
                for task_id in self.task_of_example[step]:
                    counts[self.task_map.tasks[task_id]] += 1
            micro_steps -= len(schedule)
            epoch += 1
        return counts

    # ---- checkpointing -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "world_size": self.world_size,
            "layout": self._layout(),
        }

    def _layout(self) -> dict:
        """What the epoch's schedule depends on besides (seed, epoch): equal layouts give equal schedules, whatever
        the number of ranks the global micro-batches are split over."""
        return {
            "examples_per_micro_step": self.world_size * self.micro_batch_size,
            "unit_steps": self.unit_steps,
            "drop_last": self.drop_last,
            "mixing": self.mixing,
            "temperature": self.temperature,
            "length_grouped": self.lengths is not None,
            "law": "tasks",  # p_c = sum of its tasks' weights (states without it: p_c ∝ w(n_c), before 2026-12-07)
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Continue where `state` stopped. A state of another world size is accepted when its global micro-batches
        are the same (e.g. 2 ranks x 4 examples -> 1 rank x 8): the schedule is then identical, only split
        differently. Raises ValueError otherwise."""
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        same_world = state.get("world_size", self.world_size) == self.world_size
        saved = {k: v for k, v in state.get("layout", {}).items() if k != "law"}
        if not same_world and saved != {k: v for k, v in self._layout().items() if k != "law"}:
            raise ValueError(
                f"sampler state was saved with world_size {state['world_size']} and schedule layout "
                f"{state.get('layout')}, this run has {self.world_size} and {self._layout()}: positions of other "
                "global micro-batches do not map onto these batches"
            )
        if state.get("layout", {}).get("law") != "tasks" and not self.old_law_agrees:
            warnings.warn(
                "this sampler state comes from a version that drew clusters by their own size (p_c ∝ w(n_c)), which "
                "gives this cluster map other cluster shares than the task law it goes on with: the rest of this epoch "
                "may use an example twice or not at all",
                stacklevel=2,
            )
        self.set_epoch(int(state["epoch"]))
        self.position = int(state["position"])


def same_shares(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Whether two weightings of the same clusters give every cluster the same share of the draws."""
    total_a, total_b = sum(a.values()), sum(b.values())
    return all(abs(a[c] / total_a - b[c] / total_b) < 1e-9 for c in a)
