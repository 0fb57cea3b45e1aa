"""The task gates of one cluster, for every adapted layer at once: computed once per forward, outside the layers.

A gate depends on the task only, never on the tokens, so nothing of it has to run inside a layer. `ClusterGates`
holds one cluster's gate logits for all L adapted layers as one tensor (L, T_c, S+K) and turns them, once per
forward, into what every layer multiplies its rank rows by: one softmax, one scatter onto the cluster's experts
and one expansion onto their rank rows for the whole model, where a gate per layer cost each layer that chain in
its forward, again in its recomputation under checkpointing, and in its backward (1.57x PEFT's kernel launches
per train step: tests/training/test_step_cost.py). Each layer takes its slice [layer_index], a view. Under
ZeRO-3 the model calls this module once per forward, which gathers its logits exactly then.

    w_{t,k} = m_k * g_{t,k},   g_t = softmax(logits[layer, t]) over the S shared and the K own experts of task t

(m_k: CGCLoraConfig.gate_multipliers; the gate's gradient is written out in cgc/adapter/layer.py.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cgc.adapter.config import CGCLoraConfig

OWN_BIAS = 1.0  # gate_init "own": the own experts' logits start this far ahead (own share K e / (S + K e))
RANDOM_STD = 0.5  # gate_init "random": the logits' standard deviation


@dataclass(frozen=True)
class ClusterShape:
    """How one cluster's experts are stacked: the S shared experts first (r_shared rank rows each), then K experts
    for each task of the cluster in task order (r_task rows each)."""

    ranks: tuple[int, ...]  # rank of each expert
    starts: tuple[int, ...]  # first rank row of each expert, and the total rank R_c last
    active: torch.Tensor  # (T_c, S+K): the experts task t mixes, shared first
    active_rows: torch.Tensor  # (T_c, R): the rank rows of those experts, R = S*r_shared + K*r_task

    @classmethod
    def of(cls, config: CGCLoraConfig, num_tasks: int) -> ClusterShape:
        S, K = config.num_shared_experts, config.num_task_experts
        ranks = (config.shared_rank,) * S + (config.task_rank,) * (K * num_tasks)
        starts = tuple(sum(ranks[:k]) for k in range(len(ranks) + 1))
        shared = torch.arange(S).expand(num_tasks, S)
        own = S + torch.arange(num_tasks)[:, None] * K + torch.arange(K)
        active = torch.cat([shared, own], dim=1)  # (T_c, S+K)
        rows = torch.stack([torch.cat([torch.arange(starts[k], starts[k + 1]) for k in task]) for task in active])
        return cls(ranks, starts, active, rows)

    @property
    def num_experts(self) -> int:
        return len(self.ranks)

    def task_path(self, single_task: int | None) -> bool:
        """Whether a batch of one task runs only that task's experts (a LoRA of rank R) instead of all of the
        cluster's: gathering them costs a few small copies, which pays only when it skips at least as many experts
        as it keeps."""
        return single_task is not None and self.num_experts >= 2 * self.active.shape[1]


class ClusterGates(nn.Module):
    """Gate logits (L, T_c, S+K) of one cluster's tasks on the L adapted layers; None when the gate is not trained
    (one expert per task, or train_gate: false): then every expert of a task keeps m_k / (S + K)."""

    def __init__(self, num_tasks: int, num_layers: int, config: CGCLoraConfig, device=None, task_path: bool = True):
        super().__init__()
        self.task_path = task_path  # False for an extension (cgc.adapter.growth): its layers take (n, R_c) scales
        S, K = config.num_shared_experts, config.num_task_experts
        self.shape = ClusterShape.of(config, num_tasks)
        learned = S + K > 1 and config.train_gate
        start = initial_logits(config, num_tasks, num_layers, device)
        self.gate_logits = nn.Parameter(start) if learned else None
        self.num_layers = num_layers
        self.register_buffer("active", self.shape.active.to(device), persistent=False)
        # spread[t, k, row] = m_k on the rank rows of expert active[t, k], 0 elsewhere: g_t @ spread[t] puts each
        # expert's weight w_{t,k} = m_k g_{t,k} on its rank rows, exactly (one nonzero term per row), in one matmul.
        m = torch.tensor(config.gate_multipliers(), dtype=torch.float32)  # (S+K,)
        spread = torch.zeros(num_tasks, S + K, self.shape.starts[-1])  # (T_c, S+K, R_c)
        for t, experts in enumerate(self.shape.active.tolist()):
            for k, e in enumerate(experts):
                spread[t, k, self.shape.starts[e] : self.shape.starts[e + 1]] = m[k]
        own_rows = torch.stack([spread[t][:, rows] for t, rows in enumerate(self.shape.active_rows)])  # (T_c, S+K, R)
        self.register_buffer("spread", spread.to(device), persistent=False)
        self.register_buffer("spread_own", own_rows.to(device), persistent=False)
        self.register_buffer("gate_multiplier", m.to(device), persistent=False)

    def gate(self) -> torch.Tensor:
        """g for every layer and task of the cluster: (L, T_c, S+K), each row sums to 1."""
        if self.gate_logits is None:
            n, like = self.active.shape[1], self.spread
            return torch.full((self.num_layers, *self.active.shape), 1.0 / n, device=like.device, dtype=like.dtype)
        return torch.softmax(self.gate_logits, dim=-1)

    def weights(self) -> torch.Tensor:
        """(L, T_c, S+K): w_{t,k} on every layer, the weight of each expert each task uses."""
        return self.gate() * self.gate_multiplier

    def task_scales(self, local_task: int) -> torch.Tensor:
        """(L, R): one task's weights on the rank rows of its own S + K experts (shape.active_rows[t])."""
        return self.gate()[:, local_task] @ self.spread_own[local_task]  # (L, S+K) @ (S+K, R)

    def forward(self, local_tasks: torch.Tensor, single_task: int | None) -> tuple[torch.Tensor, ...]:
        """What every layer multiplies the rank rows of this cluster's samples by, one tensor per layer: (n, R_c),
        the weights of each sample's task on all of the cluster's rank rows (0 on experts the task may not use); or
        (R,) when a batch of one task runs only that task's experts (ClusterShape.task_path). Split by `unbind`:
        the layers' gradients come back in one stack, not one zero-filled (L, ...) tensor per layer."""
        if self.task_path and self.shape.task_path(single_task):
            return self.task_scales(single_task).unbind(0)
        g = self.gate().transpose(0, 1)  # (T_c, L, S+K)
        rows = torch.bmm(g, self.spread.to(g.dtype))  # (T_c, L, R_c): every task's weights on every layer
        T, L, R = rows.shape
        # each sample's task's rows: an embedding lookup, whose backward is one kernel (an index's takes two)
        per_sample = F.embedding(local_tasks, rows.reshape(T, L * R)).view(-1, L, R)  # (n, L, R_c)
        return per_sample.unbind(1)  # L x (n, R_c)


def initial_logits(config: CGCLoraConfig, num_tasks: int, num_layers: int, device) -> torch.Tensor:
    """(L, T_c, S+K) gate logits at the start (config.gate_init)."""
    S, K = config.num_shared_experts, config.num_task_experts
    logits = torch.zeros(num_layers, num_tasks, S + K, device=device)
    if config.gate_init == "own":
        logits[:, :, S:] = OWN_BIAS
    elif config.gate_init == "random":
        logits.normal_(0.0, RANDOM_STD)
    return logits


def start_own_share(config: CGCLoraConfig) -> float | None:
    """The share of a task's gate on its own experts at the start, read off `initial_logits` (K / (S + K) from a
    uniform start, K e / (S + K e) from an own-biased one); None for a random start (it differs by task)."""
    S, K = config.num_shared_experts, config.num_task_experts
    if config.gate_init == "random" or S + K == 0:
        return None
    start = initial_logits(config, num_tasks=1, num_layers=1, device="cpu").softmax(-1)  # (1, 1, S+K)
    return float(start[0, 0, S:].sum())
