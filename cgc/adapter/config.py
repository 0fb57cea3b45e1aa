"""`CGCLoraConfig`: the cluster map and expert shapes of a CGC-LoRA model, validated in one place."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field

from cgc.adapter.errors import AdapterConfigError
from cgc.adapter.task_map import TaskMap

CONFIG_NAME = "cgc_config.json"
InvalidConfigError = AdapterConfigError  # its name before cgc.CGCError had subclasses per layer
SCALINGS = ("rslora", "lora")
GATE_INITS = ("uniform", "own", "random")
# What a saved config that lacks a key was written with: the only behaviour versions before the key had.
SAVED_BEFORE = {
    "scaling": "lora",
    "gate_init": "uniform",
    "train_gate": True,
    "r_shared": None,
    "r_task": None,
    "extends": {},
}


@dataclass(frozen=True)
class CGCLoraConfig:
    """Configuration of CGC-LoRA (arXiv 2402.01684).

    clusters: cluster name -> its tasks. Every task belongs to exactly one cluster; task ids follow the
        order in which tasks are listed here, so they stay stable across save/load.
    r: rank of each expert (r_shared / r_task: of the shared / the task experts, when they differ).
    num_shared_experts (S): experts shared by all tasks of a cluster.
    num_task_experts (K): experts owned by a single task.
    target_modules: module-name suffixes (PEFT semantics) or one regex matched against the full name.
    scaling: how task t's experts are weighted (cgc.adapter.layer): "rslora" (the default) gives expert k the
        weight w_k = alpha / sqrt(R) * n * g_{t,k}, with R = S*r_shared + K*r_task the rank of the task's experts,
        n = S + K and g_t the gate (a softmax, summing to 1): at a uniform gate every expert weighs
        alpha / sqrt(R), so every task is an rsLoRA of rank R and a first optimizer step changes a layer's output
        by about as much for any split of R into experts (tests/adapter/test_step_size.py). "lora": w_k =
        alpha / r * g_{t,k}, the rule of versions before 0.2 (their saved adapters load with it).
    gate_init: the gate logits' start: "own" (the default: the task's own experts' logits OWN_BIAS ahead, so
        they carry K e / (S + K e) of its delta, 58 % at S=2, K=1), "uniform" (zeros: 1 / (S + K)) or "random"
        (normal, std RANDOM_STD). The gate's gradient is zero until the experts move and a few hundred steps move
        a logit only so far, so the start decides much of a short run's mixture; from a uniform start the
        shared experts carried two thirds of every task, and a task whose cluster's inputs look like its own but
        whose answers differ lost to its neighbours (docs/experiments.md, 2026-12-06, seventh session). The start
        also sets each expert's step: Adam moves B by about lr whatever weight stands before it, so an expert's
        output step is proportional to its weight; under "rslora" with equal ranks, from "own" a task's own expert
        steps e times as far as each shared one (1.73x and 0.64x a uniform start's at S=2, K=1;
        tests/adapter/test_step_size.py).
        train_gate: False keeps the gate uniform (no logits).
    extends: tasks added to a trained cluster (cgc.adapter.growth): cluster -> the cluster whose S shared experts
        its tasks mix with their own K, e.g. {"numbers+1": "numbers"}. Such a cluster stores only its tasks' own
        experts and gates; the shared experts stay in (and are frozen with) the cluster it extends.

    Frozen: `task_map` (task name <-> id, id -> cluster) is built once from `clusters` and must not drift from
    it; use `dataclasses.replace` for a changed copy.
    """

    # metadata["help"]: one line per field, shown in the README's recipe key table (cgc.recipe.key_table).
    clusters: dict[str, list[str]] = field(
        metadata={
            "help": "cluster -> its tasks; task ids follow this order; each step trains one cluster (fewer "
            "clusters: each expert more steps)"
        }
    )
    r: int = field(default=8, metadata={"help": "rank of each expert; a task's export has rank (S+K)·r"})
    alpha: float = field(
        default=16.0, metadata={"help": "scaling numerator: an expert weighs alpha/sqrt(S·r+K·r) at a uniform gate"}
    )
    num_shared_experts: int = field(default=2, metadata={"help": "S: experts shared by the tasks of a cluster"})
    num_task_experts: int = field(default=1, metadata={"help": "K: experts of each task alone"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the experts' input"})
    target_modules: list[str] | str = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "module-name suffixes (PEFT rules) or one regex; more modules: more capacity and compute"},
    )
    r_shared: int | None = field(default=None, metadata={"help": "rank of each shared expert (null: r)"})
    r_task: int | None = field(default=None, metadata={"help": "rank of each task's own expert (null: r)"})
    scaling: str = field(
        default="rslora",
        metadata={"help": "`rslora`: alpha/sqrt(task rank) x experts x gate; `lora`: alpha/r x gate (before 0.2)"},
    )
    gate_init: str = field(
        default="own",
        metadata={"help": "gate logits' start: `own` (own experts ahead: 58% at S=2, K=1), `uniform` or `random`"},
    )
    train_gate: bool = field(default=True, metadata={"help": "false: the gate stays uniform (no gate parameters)"})
    extends: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "set by init_from runs: cluster -> the trained cluster whose frozen shared experts it mixes"},
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
        for key in ("r_shared", "r_task"):
            value = getattr(self, key)
            if value is not None and (not _is_int(value) or value < 1):
                found.append(f"{key} must be an integer >= 1 or null, got {value!r}")
        if self.scaling not in SCALINGS:
            found.append(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.gate_init not in GATE_INITS:
            found.append(f"gate_init must be one of {GATE_INITS}, got {self.gate_init!r}")
        if not isinstance(self.train_gate, bool):
            found.append(f"train_gate must be true or false, got {self.train_gate!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            found.append(f"alpha must be a number > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            found.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        found += self._extension_problems()
        tm = self.target_modules
        if isinstance(tm, str):
            if not tm:
                found.append("target_modules is an empty string")
        elif not isinstance(tm, list) or not tm or not all(isinstance(t, str) and t for t in tm):
            found.append(f"target_modules must be a non-empty list of names or a regex string, got {tm!r}")
        return found

    def _extension_problems(self) -> list[str]:
        if not isinstance(self.extends, dict):
            return [f"extends must be a mapping of cluster -> the cluster it extends, got {self.extends!r}"]
        found, order = [], list(self.clusters)
        for cluster, parent in self.extends.items():
            if cluster not in self.clusters or parent not in self.clusters:
                found.append(f"extends: {cluster!r} -> {parent!r} names a cluster not in clusters")
            elif parent in self.extends or order.index(parent) > order.index(cluster):
                found.append(f"extends: {cluster!r} must extend an earlier cluster that extends none, not {parent!r}")
        if self.extends and _is_int(self.num_shared_experts) and self.num_shared_experts == 0:
            found.append("extends needs shared experts to share (num_shared_experts >= 1)")
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
    def shared_rank(self) -> int:
        return self.r if self.r_shared is None else self.r_shared

    @property
    def task_rank(self) -> int:
        return self.r if self.r_task is None else self.r_task

    @property
    def experts_per_task(self) -> int:
        """S + K: the experts one task mixes."""
        return self.num_shared_experts + self.num_task_experts

    @property
    def exported_rank(self) -> int:
        """S*r_shared + K*r_task: the rank of each task's exported PEFT LoRA (what a server must allow per
        adapter)."""
        return self.num_shared_experts * self.shared_rank + self.num_task_experts * self.task_rank

    def gate_multipliers(self) -> list[float]:
        """m_k for each of a task's S + K experts (shared first): expert k weighs w_k = m_k * g_{t,k}, so at a
        uniform gate (g = 1 / (S + K)) it weighs m_k / (S + K). See `scaling`."""
        if self.scaling == "lora":  # before 0.2: alpha / r per expert times a gate that sums to 1
            return [self.alpha / self.shared_rank] * self.num_shared_experts + [
                self.alpha / self.task_rank
            ] * self.num_task_experts
        n = self.experts_per_task
        return [self.alpha * n / math.sqrt(self.exported_rank)] * n

    def shared_rows(self) -> int:
        """S*r_shared: the rank rows of a cluster's shared experts, the first rows of its stack."""
        return self.num_shared_experts * self.shared_rank

    def user_clusters(self) -> dict[str, list[str]]:
        """The cluster map as a user writes it: each cluster with the tasks added to it (`extends`) appended."""
        merged = {c: list(ts) for c, ts in self.clusters.items() if c not in self.extends}
        for cluster, parent in self.extends.items():
            merged[parent] += self.clusters[cluster]
        return merged

    def num_experts(self, cluster: str) -> int:
        """S + K * |T_c|: experts stored for one cluster on every adapted layer (an extension, `extends`, stores
        its tasks' K each only: its shared experts are the extended cluster's)."""
        shared = 0 if cluster in self.extends else self.num_shared_experts
        return shared + self.num_task_experts * len(self.clusters[cluster])

    def cluster_rank(self, cluster: str) -> int:
        """S*r_shared + K*r_task*|T_c|: the rank of all of a cluster's stored experts on one layer (an extension
        stores no shared rows)."""
        shared = 0 if cluster in self.extends else self.shared_rows()
        return shared + self.num_task_experts * self.task_rank * len(self.clusters[cluster])

    # ---- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CGCLoraConfig:
        """A saved config (cgc_config.json): a key it lacks takes the value of the versions that wrote it without
        it (SAVED_BEFORE: e.g. an adapter saved before 0.2 keeps scaling "lora"), so it loads as it was trained."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CGCLoraConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**{**SAVED_BEFORE, **data})

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
