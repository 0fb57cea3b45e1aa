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

from cgc.config import CGCLoraConfig
from cgc.routing import Router


class ClusterExperts(nn.Module):
    """Stacked experts and task gates of one cluster on one layer.

    Expert order: the S shared experts, then K experts for each task of the cluster in task order.
    """

    def __init__(self, num_tasks: int, config: CGCLoraConfig, in_features: int, out_features: int, device=None):
        super().__init__()
        S, K, r = config.num_shared_experts, config.num_task_experts, config.r
        num_experts = S + K * num_tasks
        self.r = r
        self.scaling = config.scaling
        self.lora_A = nn.Parameter(torch.empty(num_experts, r, in_features, device=device))  # (E, r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(num_experts, out_features, r, device=device))  # (E, d_out, r)
        for k in range(num_experts):
            # Same init as PEFT's LoRA A (kaiming-uniform on each (r, d_in) matrix); B starts at zero so the
            # adapted model starts equal to the base model.
            nn.init.kaiming_uniform_(self.lora_A.data[k], a=math.sqrt(5))
        # A gate over one expert is always 1: keep no parameter for it (per-task LoRA, single shared LoRA).
        self.gate_logits = nn.Parameter(torch.zeros(num_tasks, S + K, device=device)) if S + K > 1 else None
        # active[t] = the S + K experts task t mixes: shared 0..S-1, then its own S + t*K ... S + t*K + K - 1.
        shared = torch.arange(S).expand(num_tasks, S)
        own = S + torch.arange(num_tasks)[:, None] * K + torch.arange(K)
        self.register_buffer("active", torch.cat([shared, own], dim=1).to(device), persistent=False)  # (T_c, S+K)

    @property
    def num_tasks(self) -> int:
        return self.active.shape[0]

    def gate(self) -> torch.Tensor:
        """g_t for every task of the cluster: (T_c, S+K), each row sums to 1."""
        if self.gate_logits is None:
            return torch.ones(self.active.shape, device=self.lora_A.device, dtype=self.lora_A.dtype)
        return torch.softmax(self.gate_logits, dim=-1)

    def task_factors(self, local_task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's experts as a single LoRA pair with the gate and scaling folded into B.

        Returns A (R, d_in) and B (d_out, R), R = (S+K)*r, with delta_W = B @ A exactly.
        """
        idx = self.active[local_task]  # (S+K,)
        scale = self.gate()[local_task] * self.scaling  # (S+K,)
        a = self.lora_A[idx]  # (S+K, r, d_in)
        b = self.lora_B[idx] * scale[:, None, None]  # (S+K, d_out, r)
        return a.reshape(-1, a.shape[-1]), b.permute(1, 0, 2).reshape(b.shape[1], -1)

    def forward(self, x: torch.Tensor, local_tasks: torch.Tensor, single_task: int | None) -> torch.Tensor:
        """x (n, L, d_in) -> delta (n, L, d_out) for n samples of this cluster."""
        if single_task is not None:
            # All samples use the same experts: one LoRA of rank R = (S+K)*r, like PEFT's.
            a, b = self.task_factors(single_task)  # (R, d_in), (d_out, R)
            return F.linear(F.linear(x, a), b)
        # Mixed tasks: gather each sample's own S+K experts and run one batched low-rank product; the gate
        # and scaling are folded into the gathered B as a per-sample scale.
        idx = self.active[local_tasks]  # (n, S+K)
        scale = self.gate()[local_tasks] * self.scaling  # (n, S+K)
        a = self.lora_A[idx].flatten(1, 2)  # (n, S+K, r, d_in) -> (n, R, d_in)
        b = self.lora_B[idx] * scale[:, :, None, None]  # (n, S+K, d_out, r)
        b = b.permute(0, 2, 1, 3).flatten(2, 3)  # (n, d_out, R)
        return torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))  # (n, L, R) -> (n, L, d_out)


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
