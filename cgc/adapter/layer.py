"""The CGC-LoRA linear layer.

    h = W0 x + (alpha / r) * sum_{k in S_c ∪ P_t} g_{t,k} * B_k A_k dropout(x)

Each adapted layer holds one `ClusterExperts` per cluster (a ModuleDict keyed by cluster name) and *calls* it
for the samples of that cluster. Under ZeRO-3 parameters are gathered by module forward hooks, so calling the
cluster's submodule is what gathers exactly the parameters that are used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.routing import Router


class ClusterExperts(nn.Module):
    """Stacked experts and task gates of one cluster on one layer.

    The E = S + K*|T_c| experts are stacked along the rank dimension, expert k being rows k*r:(k+1)*r of
    `lora_A` (E*r, d_in) and the same columns of `lora_B` (d_out, E*r): the S shared experts first, then K
    experts for each task of the cluster in task order. Stored this way the cluster is one LoRA of rank E*r,
    and a task's mixture is that LoRA with a per-expert scale (zero for experts the task may not use).
    """

    def __init__(self, num_tasks: int, config: CGCLoraConfig, in_features: int, out_features: int, device=None):
        super().__init__()
        S, K, r = config.num_shared_experts, config.num_task_experts, config.r
        num_experts = S + K * num_tasks
        self.r = r
        self.scaling = config.scaling
        self.lora_A = nn.Parameter(torch.empty(num_experts * r, in_features, device=device))  # (E*r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, num_experts * r, device=device))  # (d_out, E*r)
        for k in range(num_experts):
            # Same init as PEFT's LoRA A (kaiming-uniform on each (r, d_in) matrix); B starts at zero so the
            # adapted model starts equal to the base model.
            nn.init.kaiming_uniform_(self.lora_A.data[k * r : (k + 1) * r], a=math.sqrt(5))
        # A gate over one expert is always 1: keep no parameter for it (per-task LoRA, single shared LoRA).
        self.gate_logits = nn.Parameter(torch.zeros(num_tasks, S + K, device=device)) if S + K > 1 else None
        # active[t] = the S + K experts task t mixes: shared 0..S-1, then its own S + t*K ... S + t*K + K - 1.
        shared = torch.arange(S).expand(num_tasks, S)
        own = S + torch.arange(num_tasks)[:, None] * K + torch.arange(K)
        active = torch.cat([shared, own], dim=1)  # (T_c, S+K)
        rows = (active[:, :, None] * r + torch.arange(r)).flatten(1)  # (T_c, (S+K)*r) rank rows of each task
        self.register_buffer("active", active.to(device), persistent=False)
        self.register_buffer("active_rows", rows.to(device), persistent=False)

    @property
    def num_experts(self) -> int:
        return self.lora_A.shape[0] // self.r

    def gate(self) -> torch.Tensor:
        """g_t for every task of the cluster: (T_c, S+K), each row sums to 1."""
        if self.gate_logits is None:
            return torch.ones(self.active.shape, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return torch.softmax(self.gate_logits, dim=-1)

    def rank_scales(self) -> torch.Tensor:
        """(T_c, E*r): scaling * g_{t,k} on the r rank rows of every expert k task t uses, 0 elsewhere."""
        dense = torch.zeros(self.active.shape[0], self.num_experts, device=self.lora_A.device, dtype=self.lora_A.dtype)
        dense = dense.scatter(1, self.active, self.gate() * self.scaling)  # (T_c, E)
        return dense.repeat_interleave(self.r, dim=1)  # (T_c, E*r)

    def task_factors(self, local_task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's experts as a single LoRA pair with the gate and scaling folded into B.

        Returns A (R, d_in) and B (d_out, R), R = (S+K)*r, with delta_W = B @ A exactly.
        """
        rows = self.active_rows[local_task]  # (R,)
        scale = (self.gate()[local_task] * self.scaling).repeat_interleave(self.r)  # (R,)
        return self.lora_A[rows], self.lora_B[:, rows] * scale

    def forward(self, x: torch.Tensor, local_tasks: torch.Tensor, single_task: int | None) -> torch.Tensor:
        """x (n, L, d_in) -> delta (n, L, d_out) for n samples of this cluster."""
        if single_task is not None and self.num_experts >= 2 * self.active.shape[1]:
            # One task of a large cluster: run only its S+K experts, a LoRA of rank (S+K)*r like PEFT's. Gathering
            # them costs a few small copies, which pays only when it skips at least as many experts as it keeps.
            a, b = self.task_factors(single_task)  # (R, d_in), (d_out, R)
            return F.linear(F.linear(x, a), b)
        # All of the cluster's experts as one LoRA of rank E*r; each sample's gate (zero on experts its task
        # may not use) is a per-sample scale on the rank dimension.
        scale = self.rank_scales()[local_tasks]  # (n, E*r)
        return F.linear(F.linear(x, self.lora_A) * scale[:, None, :], self.lora_B)  # (n, L, E*r) -> (n, L, d_out)


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
