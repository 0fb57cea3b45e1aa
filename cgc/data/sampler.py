"""Cluster-aware distributed batch sampler.

Every micro-step, all ranks run the same cluster: under ZeRO-3 each rank must touch the same parameters in
the same order or the collectives hang, and CGC-LoRA's parameters are grouped by cluster. The whole epoch's
schedule is drawn from a generator seeded only by (seed, epoch), so every rank computes the same schedule
without communicating; rank k takes the k-th micro-batch of each global step.

Mixing. The law is over tasks: task t's share of the examples is p_t ∝ w(n_t), where n is the number of
examples and w(n) = n (proportional), 1 (uniform) or n^(1/T) (temperature). A cluster is drawn for each
scheduling unit (a micro-step, or with cluster_per="optimizer_step" the grad_accum micro-steps of one optimizer
step) with probability p_c = sum of its tasks' p_t, and inside the cluster each slot draws a task ∝ w(n_t). So how
often a task is trained does not depend on the cluster map: the map decides which experts tasks share, not how
much data each gets (two earlier versions let it decide: README, "Task clustering on the demo data"). A cluster
too small for one unit is never drawn (with a warning), where the same task inside a larger cluster would be.

Epochs and passes. An epoch is as many examples as the data has (the clusters that can be drawn, in whole units:
`epoch_units`). Each task's examples are taken in a shuffled order; a task drawn more often than it has examples
(upsampled by `uniform` or `temperature`) starts a new pass over them in a fresh order, so within an epoch an
example is drawn again only after every example of its task was, and a task drawn less often is not reached in
full that epoch. Each epoch reshuffles every task; `epoch_usage()` reports what each epoch used per task.

Length grouping (`lengths` given): when a cluster is drawn and has no grouped steps waiting, the sampler takes
up to POOL_UNITS units' worth of its examples at once (by the same task law; fewer where that would draw more
than about half of a task's examples), sorts them by length, cuts them into units of neighbouring lengths and
serves those units, in a shuffled order, the next times the cluster is drawn. Each micro-batch then holds
examples of similar length and pays little padding; the law, the passes and the state are unchanged. Examples
waiting in a pool when the epoch ends count as not reached.

State (`state_dict`): seed, epoch and the number of micro-steps already yielded in the epoch; restoring
recomputes the epoch's schedule and continues exactly where it stopped, also on another number of ranks when
the global micro-batch (ranks x micro_batch_size) is the same. A state saved by a version before the passes
(whose epoch ended when the drawn cluster ran short) resumes the same batches up to the first unit where a task
ran short (with length grouping: where no pool is capped below POOL_UNITS), with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from cgc.adapter.errors import CGCError
from cgc.adapter.task_map import TaskMap

MIXINGS = ("proportional", "uniform", "temperature")
CLUSTER_PER = ("micro_step", "optimizer_step")
LAW = "task passes"  # the mixing law over tasks, with new passes over an upsampled task (state_dict's layout)
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
        # A cluster with fewer examples than one scheduling unit could fill it only by repeating examples inside
        # one step: leave it out, loudly.
        unit = world_size * micro_batch_size * self.unit_steps
        self.cluster_weights = {c: sum(self.task_weights[c].values()) for c, n in sizes.items() if n >= unit}
        # An epoch is as many examples as the clusters that can be drawn hold, in whole units (drop_last=False: the
        # rest in one last partial micro-step).
        self.epoch_units, self.epoch_rest = divmod(sum(sizes[c] for c in self.cluster_weights), unit)
        self.pool_units = {c: self._pool_units(c, unit) for c in self.cluster_weights}
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

    def _pool_units(self, cluster: str, unit: int) -> int:
        """Units a length-grouping pool of the cluster holds: up to POOL_UNITS, but in expectation at most half of
        any task's examples, so that an upsampled task rarely starts a new pass inside one pool (its copies, of the
        same length, would land in the same micro-batch)."""
        weights = self.task_weights[cluster]
        total = sum(weights.values())
        fits = min(len(self.examples_of_task[t]) * total / (2 * unit * w) for t, w in weights.items())
        return int(min(POOL_UNITS, max(1, fits)))

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
        for _ in range(self.epoch_units):
            cluster = names[rng.choice(len(names), p=p)]
            picked = self._next_unit(rng, cluster, queues, pools[cluster], unit)
            self._count(picked, usage)
            schedule += [(cluster, step) for step in picked.reshape(self.unit_steps, per_step)]
        if not self.drop_last:
            schedule += self._last_partial_step(rng, names, p, queues, usage)
        return schedule, usage

    def _next_unit(self, rng, cluster: str, queues, pool: list[np.ndarray], unit: int) -> np.ndarray:
        """The next unit's examples of `cluster`. Length grouping: from the cluster's pool of units of neighbouring
        lengths, refilled with up to POOL_UNITS units when empty."""
        tasks = list(self.task_weights[cluster])
        if self.lengths is None:
            picked = self._take(rng, tasks, queues, self._task_counts(rng, cluster, tasks, unit))
            rng.shuffle(picked)  # spread the tasks over ranks and micro-steps
            return picked
        if not pool:
            left = sum(len(queues[t]) for t in tasks)  # (the first pass's end: as the sampler did before passes)
            units = min(self.pool_units[cluster], max(1, left // unit))
            taken = self._take(rng, tasks, queues, self._task_counts(rng, cluster, tasks, unit * units))
            by_length = taken[np.argsort(self.lengths[taken], kind="stable")]
            pool.extend(by_length.reshape(units, unit))
            rng.shuffle(pool)  # not shortest first: no curriculum by length
        return pool.pop()  # neighbouring lengths, in order: each rank gets a similar slice

    def _task_counts(self, rng, cluster: str, tasks: list[str], size: int) -> np.ndarray:
        """How many of `size` slots go to each of the cluster's tasks, drawn by the task law."""
        law = np.array([self.task_weights[cluster][t] for t in tasks])
        return np.bincount(rng.choice(len(tasks), size=size, p=law / law.sum()), minlength=len(tasks))

    def _take(self, rng, tasks: list[str], queues, counts: np.ndarray) -> np.ndarray:
        """counts[i] examples of tasks[i] from its shuffled queue; a task whose queue runs out starts a new pass
        over its examples in a fresh order (the law drew it more often than it has examples: it is upsampled). The
        old pass's rest goes last in the new pass, so one take of at most n_t examples of a task never repeats one."""
        taken = []
        for task, n in zip(tasks, counts, strict=True):
            queue, examples = queues[task], self.examples_of_task[task]
            if len(queue) < n:  # popped from the end: this pass's rest, then the new passes in order
                rest = set(queue)
                new = rng.permutation(examples)
                passes = [[i for i in new if i in rest] + [i for i in new if i not in rest]]
                while len(queue) + len(examples) * len(passes) < n:  # a take longer than a pass: more passes
                    passes.append(list(rng.permutation(examples)))
                queue = [i for p in reversed(passes) for i in p] + queue
            taken += queue[len(queue) - n :][::-1]
            queues[task] = queue[: len(queue) - n]
        return np.array(taken, dtype=np.int64)

    def _count(self, picked: np.ndarray, usage: dict[str, int]) -> None:
        for task_id, n in zip(*np.unique(self.task_of_example[picked], return_counts=True), strict=True):
            usage[self.task_map.name_of(int(task_id))] += int(n)

    def _last_partial_step(self, rng, names, p, queues, usage) -> list[tuple[str, np.ndarray]]:
        """drop_last=False: one last micro-step for the examples that do not fill a unit, split evenly over the
        ranks, of a cluster drawn by the law."""
        per_rank = min(self.micro_batch_size, self.epoch_rest // self.world_size)
        if per_rank == 0:
            return []
        cluster = names[rng.choice(len(names), p=p)]
        tasks = list(self.task_weights[cluster])
        taken = self._take(rng, tasks, queues, self._task_counts(rng, cluster, tasks, per_rank * self.world_size))
        self._count(taken, usage)
        return [(cluster, taken)]

    def _ensure_schedule(self) -> list[tuple[str, np.ndarray]]:
        # Never empty: some cluster holds a unit, so epoch_units >= 1.
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
            "law": LAW,  # states without it: p_c ∝ w(n_c); "tasks": epochs ended when a cluster ran short
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
        law = state.get("layout", {}).get("law")
        if law != LAW:
            by_size = law is None and not self.old_law_agrees
            earlier = "drew clusters by their own size (p_c ∝ w(n_c)) and " if by_size else ""
            warnings.warn(
                f"this sampler state comes from a version that {earlier}ended an epoch when the drawn cluster ran "
                "short; this version draws tasks by their own law and starts new passes over upsampled tasks: the rest "
                "of this epoch may use an example twice or not at all",
                stacklevel=2,
            )
        self.set_epoch(int(state["epoch"]))
        self.position = int(state["position"])


def same_shares(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    """Whether two weightings of the same clusters give every cluster the same share of the draws."""
    total_a, total_b = sum(a.values()), sum(b.values())
    return all(abs(a[c] / total_a - b[c] / total_b) < 1e-9 for c in a)
