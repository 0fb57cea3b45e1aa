"""What a recipe records per optimizer step: `StepStats` (sums over micro-batches, reduced over ranks in one
collective) and `RunLog` (metrics.jsonl and TensorBoard, written by rank 0)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from cgc.adapter.gates import start_own_share
from cgc.adapter.model import CGCModel
from cgc.adapter.task_map import TaskMap
from cgc.training.distributed import all_reduce_sum
from cgc.training.run_dir import RunDir


class StepStats:
    """One optimizer step's sums on this rank, by task (id) and cluster: summed per-token loss and target tokens.

    `add` takes each micro-batch; `reduce` sums every rank's numbers in one all-reduce. Every loss it reports is a
    mean over target tokens, so it does not depend on how the step's examples were split over ranks and
    micro-batches. Task and cluster sums are arrays indexed like `task_map.tasks` / `task_map.clusters`, so no
    key is ever spelled as a string.
    """

    def __init__(self, task_map: TaskMap):
        self.task_map = task_map
        self.tokens = 0.0  # real (unpadded) tokens seen, prompts included
        self.padded_tokens = 0.0  # every position the model ran on (batch x width), padding included
        self.task_loss = np.zeros(len(task_map.tasks))  # summed per-token loss of each task's target tokens
        self.task_tokens = np.zeros(len(task_map.tasks))
        self.clusters: list[str] = []  # this step's micro-batch clusters, in order (the same on every rank)

    def add(
        self,
        cluster: str,
        tokens: float,
        padded_tokens: float,
        task_ids: torch.Tensor,
        per_sample_loss: torch.Tensor,
        per_sample_tokens: torch.Tensor,
    ) -> None:
        self.clusters.append(cluster)
        self.tokens += tokens
        self.padded_tokens += padded_tokens
        ids = task_ids.cpu().numpy()
        np.add.at(self.task_loss, ids, per_sample_loss.float().cpu().numpy())
        np.add.at(self.task_tokens, ids, per_sample_tokens.float().cpu().numpy())

    def tasks_seen(self) -> list[str]:
        return [t for t, n in zip(self.task_map.tasks, self.task_tokens, strict=True) if n]

    def reduce(self) -> StepStats:
        """The sums over all ranks (one collective)."""
        n_t = len(self.task_map.tasks)
        parts = ([self.tokens, self.padded_tokens], self.task_loss, self.task_tokens)
        flat = np.array(all_reduce_sum(np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]).tolist()))
        total = StepStats(self.task_map)
        total.clusters = list(self.clusters)
        head, total.task_loss, total.task_tokens = np.split(flat, np.cumsum([2, n_t]))
        total.tokens, total.padded_tokens = float(head[0]), float(head[1])
        return total

    @property
    def loss(self) -> float:
        """Mean loss per target token of the step (NaN when it had no target tokens)."""
        n = self.task_tokens.sum()
        return float(self.task_loss.sum() / n) if n else float("nan")

    @property
    def padding_fraction(self) -> float:
        """Share of the positions the model ran on that were padding."""
        return padding_fraction(self.tokens, self.padded_tokens)

    def task_losses(self) -> dict[str, float]:
        """Mean loss per target token of each task that had examples in the step."""
        return {
            t: float(s / n) for t, s, n in zip(self.task_map.tasks, self.task_loss, self.task_tokens, strict=True) if n
        }

    def cluster_losses(self) -> dict[str, float]:
        """Mean loss per target token of each cluster that had examples in the step."""
        losses = {}
        for c in self.task_map.clusters:
            ids = [self.task_map.id_of(t) for t in self.task_map.tasks_of(c)]
            n = self.task_tokens[ids].sum()
            if n:
                losses[c] = float(self.task_loss[ids].sum() / n)
        return losses

    def record(self, step: int, lrs: dict[str, float], grad_norm: float | None, seconds: float) -> dict:
        """The metrics.jsonl object of this (reduced) step: `lrs` by parameter group, `seconds` the step's wall time."""
        return {
            "step": step,
            "loss": self.loss,
            "lr": lrs["experts"],
            "lr_groups": lrs,
            "tokens_per_s": self.tokens / seconds,
            "padding_fraction": self.padding_fraction,
            "cluster": self.clusters[0] if len(set(self.clusters)) == 1 else self.clusters,
            "task_losses": self.task_losses(),
            "cluster_losses": self.cluster_losses(),
            "grad_norm": grad_norm,
        }


def padding_fraction(tokens: float, padded_tokens: float) -> float:
    """Share of `padded_tokens` (every position the model ran on) that were padding, not one of the `tokens`."""
    return 1.0 - tokens / padded_tokens if padded_tokens else 0.0


class PhaseTimes:
    """Wall seconds of the training loop's phases on this rank, summed over the run: where a step's time goes.
    On a GPU these are host times (kernels run asynchronously): compare them on CPU ranks, or with a profiler."""

    PHASES = ("data", "forward", "backward", "optimizer", "stats", "log", "checkpoint")

    def __init__(self):
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self._step_start = self._last = time.perf_counter()

    def start(self) -> None:
        """A new optimizer step begins."""
        self._step_start = self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """The time since the last mark was spent in `phase`."""
        now = time.perf_counter()
        self.seconds[phase] += now - self._last
        self._last = now

    def step_seconds(self) -> float:
        """Seconds since this step started."""
        return max(time.perf_counter() - self._step_start, 1e-9)

    def training_seconds(self) -> float:
        """Every phase but checkpoint saves: what tokens/s is measured over."""
        return sum(v for k, v in self.seconds.items() if k != "checkpoint")


class RunLog:
    """metrics.jsonl (one object per logged step) and TensorBoard scalars, written by rank 0."""

    def __init__(self, out: Path, num_shared: int, rank: int, resume_from: int):
        self.rank, self.num_shared = rank, num_shared
        self.path = RunDir(out).metrics
        self.writer = None
        self.last_loss = float("nan")  # the loss of the last step kept (rank 0), for a resume that trains nothing
        if rank != 0:
            return
        if self.path.exists():  # a resumed run continues the file; steps after the checkpoint are re-run
            kept = [
                line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_from
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
            if kept:
                self.last_loss = json.loads(kept[-1])["loss"]
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(RunDir(out).tensorboard), purge_step=resume_from + 1 if resume_from else None)

    def write(self, record: dict, gates: dict[str, list[float]]) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step, w = record["step"], self.writer
        for key in ("loss", "tokens_per_s", "grad_norm"):
            if record[key] is not None:
                w.add_scalar(f"train/{key}", record[key], step)
        for group, lr in record["lr_groups"].items():
            w.add_scalar(f"lr/{group}", lr, step)
        for task, value in record["task_losses"].items():
            w.add_scalar(f"loss_task/{task}", value, step)
        for cluster, value in record["cluster_losses"].items():
            w.add_scalar(f"loss_cluster/{cluster}", value, step)
        S = self.num_shared
        for task, weights in gates.items():
            for k, g in enumerate(weights):
                w.add_scalar(f"gate/{task}/{'shared' if k < S else 'own'}{k if k < S else k - S}", g, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def mean_gates(model: CGCModel) -> dict[str, list[float]]:
    """Each task's gate weights averaged over the adapted layers (what TensorBoard's gate/ scalars show)."""
    return {task: torch.stack(list(model.gate(task).values())).mean(dim=0).tolist() for task in model.tasks}


def write_gates(model: CGCModel, path: Path) -> None:
    """gates.json: per task and adapted layer, the gate weights g_t (its cluster's shared experts, then its own):
    what the gates learned, for the comparison report's heatmap (cgc.analysis.gate_report); and the own share
    they started from, so that a report can tell a gate that moved from one that started off uniform."""
    tasks = {t: {name: g.tolist() for name, g in model.gate(t).items()} for t in model.tasks}
    config = model.cgc_config
    start = start_own_share(config)
    gates = {"num_shared_experts": config.num_shared_experts, "start_own_share": start, "tasks": tasks}
    path.write_text(json.dumps(gates) + "\n")
