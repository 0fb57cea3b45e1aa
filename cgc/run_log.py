"""What a recipe records per optimizer step: `StepStats` (sums over micro-batches, reduced over ranks in one
collective) and `RunLog` (metrics.jsonl and TensorBoard, written by rank 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cgc.distributed import all_reduce_sum
from cgc.task_map import TaskMap


class StepStats:
    """One optimizer step's loss and token sums on this rank: in all, per task (by id) and per cluster.

    `add` takes each micro-batch; `reduce` sums every rank's numbers in one all-reduce. Task and cluster sums are
    arrays indexed like `task_map.tasks` / `task_map.clusters`, so no key is ever spelled as a string.
    """

    def __init__(self, task_map: TaskMap):
        self.task_map = task_map
        self.loss = 0.0  # mean over micro-batches of the micro-batch loss
        self.tokens = 0.0  # real (unpadded) tokens seen
        self.task_loss = np.zeros(len(task_map.tasks))  # summed per-token loss of each task's target tokens
        self.task_tokens = np.zeros(len(task_map.tasks))
        self.cluster_loss = np.zeros(len(task_map.clusters))  # summed micro-batch losses of each cluster
        self.cluster_batches = np.zeros(len(task_map.clusters))
        self.clusters: list[str] = []  # this step's micro-batch clusters, in order (the same on every rank)

    def add(
        self,
        cluster: str,
        loss: float,
        grad_accum: int,
        tokens: float,
        task_ids: torch.Tensor,
        per_sample_loss: torch.Tensor,
        per_sample_tokens: torch.Tensor,
    ) -> None:
        ci = self.task_map.clusters.index(cluster)
        self.clusters.append(cluster)
        self.loss += loss / grad_accum
        self.tokens += tokens
        self.cluster_loss[ci] += loss
        self.cluster_batches[ci] += 1
        ids = task_ids.cpu().numpy()
        np.add.at(self.task_loss, ids, per_sample_loss.float().cpu().numpy())
        np.add.at(self.task_tokens, ids, per_sample_tokens.float().cpu().numpy())

    def tasks_seen(self) -> list[str]:
        return [t for t, n in zip(self.task_map.tasks, self.task_tokens, strict=True) if n]

    def reduce(self) -> StepStats:
        """The sums over all ranks (one collective); `loss` becomes the sum of the ranks' losses."""
        n_t, n_c = len(self.task_map.tasks), len(self.task_map.clusters)
        parts = ([self.loss, self.tokens], self.task_loss, self.task_tokens, self.cluster_loss, self.cluster_batches)
        flat = np.array(all_reduce_sum(np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]).tolist()))
        total = StepStats(self.task_map)
        total.clusters = list(self.clusters)
        head, total.task_loss, total.task_tokens, total.cluster_loss, total.cluster_batches = np.split(
            flat, np.cumsum([2, n_t, n_t, n_c])
        )
        total.loss, total.tokens = float(head[0]), float(head[1])
        return total

    def task_losses(self) -> dict[str, float]:
        """Mean loss per target token of each task that had examples in the step."""
        return {
            t: float(s / n) for t, s, n in zip(self.task_map.tasks, self.task_loss, self.task_tokens, strict=True) if n
        }

    def cluster_losses(self) -> dict[str, float]:
        return {
            c: float(s / n)
            for c, s, n in zip(self.task_map.clusters, self.cluster_loss, self.cluster_batches, strict=True)
            if n
        }


class RunLog:
    """metrics.jsonl (one object per logged step) and TensorBoard scalars, written by rank 0."""

    def __init__(self, out: Path, num_shared: int, rank: int, resume_from: int):
        self.rank, self.num_shared = rank, num_shared
        self.path = out / "metrics.jsonl"
        self.writer = None
        if rank != 0:
            return
        if self.path.exists():  # a resumed run continues the file; steps after the checkpoint are re-run
            kept = [
                line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_from
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_from + 1 if resume_from else None)

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
