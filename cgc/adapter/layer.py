"""The CGC-LoRA linear layer.

    h = W0 x + sum_{k in S_c ∪ P_t} w_{t,k} * B_k A_k dropout(x),   w_{t,k} = m_k * g_{t,k}

g_t = softmax(gate logits of task t) over its S shared and K own experts; m_k = CGCLoraConfig.gate_multipliers():
under the default "rslora" rule m_k = alpha * (S + K) / sqrt(S*r_shared + K*r_task), so at a uniform gate every
expert weighs alpha / sqrt(R) and each task is an rsLoRA of its rank R.

Each adapted layer holds one `ClusterExperts` per cluster (a ModuleDict keyed by cluster name) and *calls* it
for the samples of that cluster. Under ZeRO-3 parameters are gathered by module forward hooks, so calling the
cluster's submodule is what gathers exactly the parameters that are used.

The gate's gradient. With d_k = B_k A_k x (expert k's output) and G_k = the sum over task t's tokens of
<dL/dh, d_k>, dL/dw_k = G_k and dL/dz_j = m * g_j * (G_j - sum_k g_k G_k) for the logits z (one multiplier m
for all slots under "rslora"): a logit rises when its expert's output points down the loss more than the gate's
average does. It is exactly 0 while every B_k is 0 (the start), so the gate begins to learn only once the
experts have moved: its learning rate is its own (train.gate_lr), not a multiple of the experts'.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.routing import Router

OWN_BIAS = 1.0  # gate_init "own": the own experts' logits start this far ahead (own share K e / (S + K e))
RANDOM_STD = 0.5  # gate_init "random": the logits' standard deviation


class ClusterExperts(nn.Module):
    """Stacked experts and task gates of one cluster on one layer.

    The E = S + K*|T_c| experts are stacked along the rank dimension: the S shared experts first (r_shared rows
    each), then K experts for each task of the cluster in task order (r_task rows each); expert k is rows
    `expert_rows(k)` of `lora_A` (R_c, d_in) and the same columns of `lora_B` (d_out, R_c). Stored this way the
    cluster is one LoRA of rank R_c, and a task's mixture is that LoRA with a per-expert weight (zero for experts
    the task may not use).
    """

    def __init__(self, num_tasks: int, config: CGCLoraConfig, in_features: int, out_features: int, device=None):
        super().__init__()
        S, K = config.num_shared_experts, config.num_task_experts
        ranks = [config.shared_rank] * S + [config.task_rank] * (K * num_tasks)  # rank of each expert
        starts = [sum(ranks[:k]) for k in range(len(ranks) + 1)]
        self.starts = starts
        self.lora_A = nn.Parameter(torch.empty(starts[-1], in_features, device=device))  # (R_c, d_in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, starts[-1], device=device))  # (d_out, R_c)
        for k in range(len(ranks)):
            # Same init as PEFT's LoRA A (kaiming-uniform on each (r, d_in) matrix); B starts at zero so the
            # adapted model starts equal to the base model.
            nn.init.kaiming_uniform_(self.lora_A.data[self.expert_rows(k)], a=math.sqrt(5))
        # A gate over one expert is always 1: keep no parameter for it (per-task LoRA, single shared LoRA), nor
        # for a gate that is not trained (the uniform-gate ablation).
        learned = S + K > 1 and config.train_gate
        self.gate_logits = nn.Parameter(initial_logits(config, num_tasks, device)) if learned else None
        # active[t] = the S + K experts task t mixes: shared 0..S-1, then its own S + t*K ... S + t*K + K - 1.
        shared = torch.arange(S).expand(num_tasks, S)
        own = S + torch.arange(num_tasks)[:, None] * K + torch.arange(K)
        active = torch.cat([shared, own], dim=1)  # (T_c, S+K)
        rows = torch.stack([torch.cat([torch.arange(starts[k], starts[k + 1]) for k in task]) for task in active])
        self.register_buffer("active", active.to(device), persistent=False)
        self.register_buffer("active_rows", rows.to(device), persistent=False)  # (T_c, R) rank rows of each task
        multipliers = torch.tensor(config.gate_multipliers(), dtype=torch.float32, device=device)  # (S+K,)
        self.register_buffer("gate_multiplier", multipliers, persistent=False)
        self.register_buffer("expert_rank", torch.tensor(ranks, device=device), persistent=False)
        self.register_buffer("slot_rank", self.expert_rank[active[0]].clone(), persistent=False)  # (S+K,)
        self.uniform_rank = ranks[0] if len(set(ranks)) == 1 else None  # an int repeat: one fewer kernel

    @property
    def num_experts(self) -> int:
        return len(self.starts) - 1

    def expert_rows(self, k: int) -> slice:
        return slice(self.starts[k], self.starts[k + 1])

    def gate(self) -> torch.Tensor:
        """g_t for every task of the cluster: (T_c, S+K), each row sums to 1."""
        if self.gate_logits is None:
            n = self.active.shape[1]
            return torch.full(self.active.shape, 1.0 / n, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return torch.softmax(self.gate_logits, dim=-1)

    def weights(self) -> torch.Tensor:
        """(T_c, S+K): w_{t,k}, the weight of each expert each task uses."""
        return self.gate() * self.gate_multiplier.to(self.lora_A.dtype)

    def rank_scales(self) -> torch.Tensor:
        """(T_c, R_c): w_{t,k} on the rank rows of every expert k task t uses, 0 elsewhere."""
        dense = torch.zeros(self.active.shape[0], self.num_experts, device=self.lora_A.device, dtype=self.lora_A.dtype)
        dense = dense.scatter(1, self.active, self.weights())  # (T_c, E)
        return dense.repeat_interleave(self.uniform_rank or self.expert_rank, dim=1)  # (T_c, R_c)

    def task_factors(self, local_task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's experts as a single LoRA pair with its weights folded into B.

        Returns A (R, d_in) and B (d_out, R), R = S*r_shared + K*r_task, with delta_W = B @ A exactly.
        """
        rows = self.active_rows[local_task]  # (R,)
        scale = self.weights()[local_task].repeat_interleave(self.uniform_rank or self.slot_rank)  # (R,)
        return self.lora_A[rows], self.lora_B[:, rows] * scale

    def forward(self, x: torch.Tensor, local_tasks: torch.Tensor, single_task: int | None) -> torch.Tensor:
        """x (n, L, d_in) -> delta (n, L, d_out) for n samples of this cluster."""
        if single_task is not None and self.num_experts >= 2 * self.active.shape[1]:
            # One task of a large cluster: run only its S+K experts, a LoRA of rank R like PEFT's. Gathering
            # them costs a few small copies, which pays only when it skips at least as many experts as it keeps.
            a, b = self.task_factors(single_task)  # (R, d_in), (d_out, R)
            return F.linear(F.linear(x, a), b)
        # All of the cluster's experts as one LoRA of rank R_c; each sample's weights (zero on experts its task
        # may not use) are a per-sample scale on the rank dimension.
        scale = self.rank_scales()[local_tasks]  # (n, R_c)
        return F.linear(F.linear(x, self.lora_A) * scale[:, None, :], self.lora_B)  # (n, L, R_c) -> (n, L, d_out)


def initial_logits(config: CGCLoraConfig, num_tasks: int, device) -> torch.Tensor:
    """(T_c, S+K) gate logits at the start (config.gate_init)."""
    S, K = config.num_shared_experts, config.num_task_experts
    logits = torch.zeros(num_tasks, S + K, device=device)
    if config.gate_init == "own":
        logits[:, S:] = OWN_BIAS
    elif config.gate_init == "random":
        logits.normal_(0.0, RANDOM_STD)
    return logits


class CGCLinear(nn.Module):
    """Wraps a frozen linear layer (nn.Linear, bnb Linear4bit / Linear8bitLt) and adds the CGC-LoRA delta.

    The wrapped layer and its weights are never modified.
    """

    def __init__(self, base_layer: nn.Linear, config: CGCLoraConfig, router: Router):
        super().__init__()
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        device = _real_device(base_layer)
        self.experts = nn.ModuleDict(
            {
                cluster: ClusterExperts(len(tasks), config, self.in_features, self.out_features, device=device)
                for cluster, tasks in config.clusters.items()
            }
        )
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self._router = router  # plain attribute, not a submodule: shared by all layers of the model

    @property
    def weight(self):
        # HF code sometimes reads `.weight` (dtype/device checks); answer for the wrapped layer.
        return self.base_layer.weight

    @property
    def bias(self):
        return self.base_layer.bias

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        routing = self._router.routing_for(x.shape[0])
        first = next(iter(self.experts.values()))
        # (B, ..., d_in) -> (B, L, d_in): the batch dim carries the task; all other dims are tokens.
        h = self.dropout(x).to(first.lora_A.dtype).reshape(x.shape[0], -1, self.in_features)
        for part in routing.slices:  # fixed cluster order on every rank
            experts = self.experts[part.cluster]
            if part.index is None:
                delta = experts(h, part.local_tasks, part.single_task)  # (B, L, d_out)
                result = result + delta.reshape(result.shape).to(result.dtype)
            else:
                delta = experts(h.index_select(0, part.index), part.local_tasks, part.single_task)  # (n, L, d_out)
                delta = delta.reshape(len(part.index), *result.shape[1:]).to(result.dtype)
                result = result.index_add(0, part.index, delta)
        return result

    def delta_weight(self, cluster: str, local_task: int) -> torch.Tensor:
        """ΔW_t (d_out, d_in) of one task on this layer, in float32."""
        a, b = self.experts[cluster].task_factors(local_task)
        return b.float() @ a.float()


def _real_device(module: nn.Module) -> torch.device:
    weight = getattr(module, "weight", None)
    if weight is None or weight.device.type == "meta":
        return torch.device("cpu")
    return weight.device
