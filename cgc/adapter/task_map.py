"""`TaskMap`: the one place that knows which task is which id and which cluster each task belongs to.

Built once from the cluster map of a `CGCLoraConfig` (cluster -> tasks) and frozen. Task ids follow the order in
which the tasks are listed, cluster by cluster, so they stay stable across save/load. Tokenisation, the sampler,
the router, `CGCModel`, evaluation and the recipes all read it; nothing else turns a task into a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cgc.adapter.errors import UnknownTaskError


@dataclass(frozen=True)
class TaskPlace:
    """Where a task lives: its cluster (name and position) and its index among the cluster's tasks."""

    cluster: str
    cluster_index: int
    local_index: int


@dataclass(frozen=True)
class TaskMap:
    tasks: tuple[str, ...]  # id -> name
    clusters: tuple[str, ...]  # cluster position -> name
    places: tuple[TaskPlace, ...]  # id -> place
    _ids: Mapping[str, int] = field(repr=False, compare=False)  # name -> id

    @classmethod
    def from_clusters(cls, clusters: Mapping[str, Sequence[str]]) -> TaskMap:
        """`clusters` must already be valid (unique tasks, no empty cluster): `CGCLoraConfig` checks that."""
        tasks, places = [], []
        for ci, (cluster, members) in enumerate(clusters.items()):
            for local, task in enumerate(members):
                tasks.append(task)
                places.append(TaskPlace(cluster, ci, local))
        return cls(tuple(tasks), tuple(clusters), tuple(places), {t: i for i, t in enumerate(tasks)})

    def __len__(self) -> int:
        return len(self.tasks)

    def __contains__(self, task: object) -> bool:
        return task in self._ids

    # ---- name <-> id --------------------------------------------------------------------------------
    def id_of(self, task: str) -> int:
        try:
            return self._ids[task]
        except KeyError:
            raise UnknownTaskError(f"unknown task {task!r}; known tasks: {list(self.tasks)}") from None

    def name_of(self, task_id: int) -> str:
        if not 0 <= task_id < len(self.tasks):
            raise UnknownTaskError(
                f"task id {task_id} out of range: this model has {len(self.tasks)} tasks (0..{len(self.tasks) - 1})"
            )
        return self.tasks[task_id]

    # ---- task -> cluster ------------------------------------------------------------------------------
    def place(self, task: str | int) -> TaskPlace:
        """The place of a task given by name or id."""
        return self.places[self.id_of(task) if isinstance(task, str) else self._checked_id(task)]

    def cluster_of(self, task: str | int) -> str:
        return self.place(task).cluster

    def tasks_of(self, cluster: str) -> tuple[str, ...]:
        if cluster not in self.clusters:
            raise ValueError(f"unknown cluster {cluster!r}; clusters: {list(self.clusters)}")
        return tuple(t for t, p in zip(self.tasks, self.places, strict=True) if p.cluster == cluster)

    def check_known(self, tasks: Iterable[str], where: str = "the data") -> None:
        """Raise one error naming the first few tasks of `where` that are in no cluster."""
        unknown = sorted(set(tasks) - set(self._ids))
        if unknown:
            raise UnknownTaskError(
                f"task {unknown[0]!r} of {where} is in no cluster"
                + (f" (nor are {unknown[1:6]})" if len(unknown) > 1 else "")
                + f"; tasks in the cluster map: {sorted(self._ids)}"
            )

    def _checked_id(self, task_id: int) -> int:
        self.name_of(task_id)
        return task_id
