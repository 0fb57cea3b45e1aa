"""`CGCLoraConfig`: the cluster map and expert shapes of a CGC-LoRA model, validated in one place."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from cgc.adapter.errors import AdapterConfigError
from cgc.adapter.task_map import TaskMap

CONFIG_NAME = "cgc_config.json"
InvalidConfigError = AdapterConfigError  # its name before cgc.CGCError had subclasses per layer


@dataclass(frozen=True)
class CGCLoraConfig:
    """Configuration of CGC-LoRA (arXiv 2402.01684).

    clusters: cluster name -> its tasks. Every task belongs to exactly one cluster; task ids follow the
        order in which tasks are listed here, so they stay stable across save/load.
    r: rank of each expert.  alpha: LoRA scaling numerator (scaling = alpha / r).
    num_shared_experts (S): experts shared by all tasks of a cluster.
    num_task_experts (K): experts owned by a single task.
    target_modules: module-name suffixes (PEFT semantics) or one regex matched against the full name.

    Frozen: `task_map` (task name <-> id, id -> cluster) is built once from `clusters` and must not drift from
    it; use `dataclasses.replace` for a changed copy.
    """

    # metadata["help"]: one line per field, shown in the README's recipe key table (cgc.recipe.key_table).
    clusters: dict[str, list[str]] = field(metadata={"help": "cluster -> its tasks; task ids follow this order"})
    r: int = field(default=8, metadata={"help": "rank of each expert; a task's export has rank (S+K)·r"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scaling = alpha / r)"})
    num_shared_experts: int = field(default=2, metadata={"help": "S: experts shared by the tasks of a cluster"})
    num_task_experts: int = field(default=1, metadata={"help": "K: experts of each task alone"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the experts' input"})
    target_modules: list[str] | str = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "module-name suffixes (PEFT rules) or one regex; more modules: more capacity and compute"},
    )

    def __post_init__(self):
        # Normalise containers first so that the JSON round trip compares equal.
        if isinstance(self.clusters, dict):
            clusters = {c: list(ts) if isinstance(ts, (list, tuple)) else ts for c, ts in self.clusters.items()}
            object.__setattr__(self, "clusters", clusters)
        if isinstance(self.target_modules, tuple):
            object.__setattr__(self, "target_modules", list(self.target_modules))
        self.validate()
        object.__setattr__(self, "_task_map", TaskMap.from_clusters(self.clusters))

    # ---- validation: every problem in one message -------------------------------------------------
    def problems(self) -> list[str]:
        found = []
        if not isinstance(self.clusters, dict) or not self.clusters:
            return ["clusters must be a non-empty mapping of cluster name -> list of task names"]
        owner: dict[str, str] = {}
        for cluster, tasks in self.clusters.items():
            if not isinstance(cluster, str) or not cluster or "." in cluster:
                # Cluster names become ModuleDict keys and a component of every parameter name.
                found.append(f"cluster name {cluster!r} must be a non-empty string without '.'")
            if not isinstance(tasks, list) or not tasks:
                found.append(f"cluster {cluster!r} is empty: give it at least one task")
                continue
            for task in tasks:
                if not isinstance(task, str) or not task:
                    found.append(f"cluster {cluster!r} has a task name that is not a non-empty string: {task!r}")
                elif task in owner:
                    found.append(f"task {task!r} appears in cluster {owner[task]!r} and again in {cluster!r}")
                else:
                    owner[task] = cluster
        if not _is_int(self.r) or self.r < 1:
            found.append(f"r must be an integer >= 1, got {self.r!r}")
        for key in ("num_shared_experts", "num_task_experts"):
            value = getattr(self, key)
            if not _is_int(value) or value < 0:
                found.append(f"{key} must be an integer >= 0, got {value!r}")
        if _is_int(self.num_shared_experts) and _is_int(self.num_task_experts):
            if self.num_shared_experts + self.num_task_experts == 0:
                found.append("num_shared_experts + num_task_experts (S + K) is 0: a task would have no expert")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            found.append(f"alpha must be a number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            found.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        tm = self.target_modules
        if isinstance(tm, str):
            if not tm:
                found.append("target_modules is an empty string")
        elif not isinstance(tm, list) or not tm or not all(isinstance(t, str) and t for t in tm):
            found.append(f"target_modules must be a non-empty list of names or a regex string, got {tm!r}")
        return found

    def validate(self) -> None:
        found = self.problems()
        if found:
            raise AdapterConfigError("invalid CGCLoraConfig", found)

    # ---- derived views ----------------------------------------------------------------------------
    @property
    def task_map(self) -> TaskMap:
        """Task name <-> id and id -> (cluster, index in the cluster), built once."""
        return self._task_map

    @property
    def tasks(self) -> list[str]:
        """All tasks in id order."""
        return list(self._task_map.tasks)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    @property
    def experts_per_task(self) -> int:
        """S + K: the experts one task mixes; its exported LoRA has rank (S + K) * r."""
        return self.num_shared_experts + self.num_task_experts

    @property
    def exported_rank(self) -> int:
        """(S + K) * r: the rank of each task's exported PEFT LoRA (and what a server must allow per adapter)."""
        return self.experts_per_task * self.r

    def num_experts(self, cluster: str) -> int:
        """S + K * |T_c|: experts stored for one cluster on every adapted layer."""
        return self.num_shared_experts + self.num_task_experts * len(self.clusters[cluster])

    # ---- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CGCLoraConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CGCLoraConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> CGCLoraConfig:
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CGCLoraConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: is it a cgc adapter directory?")
        with open(path) as f:
            return cls.from_json(f.read())


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
