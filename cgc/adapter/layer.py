"""The CGC-LoRA linear layer.

    h = W0 x + sum_{k in S_c ∪ P_t} w_{t,k} * B_k A_k dropout(x),   w_{t,k} = m_k * g_{t,k}

g_t = softmax(gate logits of task t on this layer) over its S shared and K own experts (cgc.adapter.gates, which
computes the weights of every layer once per forward); m_k = CGCLoraConfig.gate_multipliers(): under the default
"rslora" rule m_k = alpha * (S + K) / sqrt(S*r_shared + K*r_task), so at a uniform gate every expert weighs
alpha / sqrt(R) and each task is an rsLoRA of its rank R.

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
from cgc.adapter.gates import ClusterShape
from cgc.adapter.routing import Router


class ClusterExperts(nn.Module):
    """Stacked experts of one cluster on one layer.

    The E = S + K*|T_c| experts are stacked along the rank dimension (cgc.adapter.gates.ClusterShape): expert k is
    rows `expert_rows(k)` of `lora_A` (R_c, d_in) and the same columns of `lora_B` (d_out, R_c). Stored this way
    the cluster is one LoRA of rank R_c, and a task's mixture is that LoRA with a per-row weight (zero on the
    experts the task may not use), which the model's gates compute once per forward for every layer.
    """

    def __init__(
        self, num_tasks: int, config: CGCLoraConfig, in_features: int, out_features: int, device=None,
        extension: bool = False,
    ):  # fmt: skip
        super().__init__()
        shape = ClusterShape.of(config, num_tasks)
        # An extension (tasks added to a trained cluster, cgc.adapter.growth) stores its own experts only: the
        # shared experts' rows [0, S*r_shared) of its stack live in the cluster it extends.
        self.shared_rows = config.shared_rows()
        self.offset = self.shared_rows if extension else 0
        self.starts = shape.starts
        rows = shape.starts[-1] - self.offset
        self.lora_A = nn.Parameter(torch.empty(rows, in_features, device=device))  # (R_c - offset, d_in)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rows, device=device))  # (d_out, R_c - offset)
        for k in range(shape.num_experts):
            # Same init as PEFT's LoRA A (kaiming-uniform on each (r, d_in) matrix); B starts at zero so the
            # adapted model starts equal to the base model.
            if self.expert_rows(k).start >= self.offset:
                nn.init.kaiming_uniform_(self.lora_A.data[self.stored(self.expert_rows(k))], a=math.sqrt(5))
        self.register_buffer("active_rows", shape.active_rows.to(device), persistent=False)  # (T_c, R)
        # train.extend_shared (cgc.adapter.growth.train_shared_experts): a trained cluster whose shared experts train
        # with the tasks a run appends to it, while its own tasks' experts stay exactly as trained
        self.shared_train_only = False

    @property
    def num_experts(self) -> int:
        return len(self.starts) - 1

    def expert_rows(self, k: int) -> slice:
        return slice(self.starts[k], self.starts[k + 1])

    def stored(self, rows: slice) -> slice:
        """Stack rows -> the rows of lora_A that hold them (an extension stores its stack from `offset` on)."""
        return slice(rows.start - self.offset, rows.stop - self.offset)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """lora_A (R_c, d_in) and lora_B (d_out, R_c) as the forward uses them. With `shared_train_only` the rows
        after the shared experts' are detached: their gradient is exactly zero, and AdamW (without weight decay for
        these tensors, CGCModel.optimizer_groups) then leaves them bit-identical."""
        if not self.shared_train_only:
            return self.lora_A, self.lora_B
        n = self.shared_rows
        a = torch.cat([self.lora_A[:n], self.lora_A[n:].detach()])
        return a, torch.cat([self.lora_B[:, :n], self.lora_B[:, n:].detach()], dim=1)

    def task_factors(self, local_task: int, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's experts as a single LoRA pair with its weights `scales` (R,) on their rank rows folded into B.

        Returns A (R, d_in) and B (d_out, R), R = S*r_shared + K*r_task, with delta_W = B @ A exactly. An
        extension returns its own experts' rows only (R - S*r_shared); CGCLinear.task_factors adds the shared ones.
        """
        rows = self.active_rows[local_task]  # (R,)
        if self.offset:
            own = rows >= self.offset
            rows, scales = rows[own] - self.offset, scales[own]
        a, b = self.factors()
        return a[rows], b[:, rows] * scales.to(b.dtype)

    def forward(
        self, x: torch.Tensor, scales: torch.Tensor, single_task: int | None, shared_only: bool = False
    ) -> torch.Tensor:
        """x (n, L, d_in) -> delta (n, L, d_out) for n samples of this cluster. `scales`: this layer's slice of
        the gates' output, (n, R_c) for each sample on all of the cluster's rank rows, or (R,) when a batch of one
        task runs only that task's experts (`single_task`). `shared_only`: the shared experts alone, for the
        samples of an extension of this cluster (`scales` on the extension's rows: its first S*r_shared are the
        shared experts'). An extension's own forward takes the rows after those."""
        if shared_only or self.offset:  # samples of an extension: (n, R_c) scales, the shared experts' rows first
            n = self.shared_rows
            if shared_only:
                a, b, scales = self.lora_A[:n], self.lora_B[:, :n], scales[:, :n]
            else:
                a, b, scales = self.lora_A, self.lora_B, scales[:, n:]
            return ScaledLowRank.apply(x, a, b, scales.to(x.dtype))  # (n, L, d_out)
        if scales.dim() == 1:
            a, b = self.task_factors(single_task, scales)  # (R, d_in), (d_out, R): a LoRA of rank R like PEFT's
            return F.linear(F.linear(x, a), b)
        # All of the cluster's experts as one LoRA of rank R_c; each sample's weights are a scale on its rank rows.
        return ScaledLowRank.apply(x, *self.factors(), scales.to(x.dtype))  # (n, L, d_out)


class ScaledLowRank(torch.autograd.Function):
    """delta = ((x A^T) * s) B^T: n samples' tokens x (n, L, d_in) through a LoRA of rank R_c whose rank rows each
    sample scales by its own weights s (n, R_c).

    The same as the three autograd ops it replaces (linear, mul, linear), with a backward that costs what a PEFT
    LoRA's costs plus two kernels per layer and keeps one tensor more than it: the weights' gradient, the sum over
    tokens of gz * (x A^T), is one batched matmul's diagonal instead of a product and a reduction, and x A^T is
    kept instead of both it and its scaled copy (which the backward recomputes: one product)."""

    @staticmethod
    def forward(ctx, x, a, b, s):
        ys = F.linear(x, a)  # (n, L, R_c)
        ctx.save_for_backward(x, a, b, s, ys)
        return F.linear(ys * s[:, None, :], b)  # (n, L, d_out)

    @staticmethod
    def backward(ctx, grad):  # grad: (n, L, d_out)
        x, a, b, s, ys = ctx.saved_tensors
        grad_x = grad_a = grad_b = grad_s = None
        gz = grad @ b  # (n, L, R_c): the gradient at the scaled rank rows
        if ctx.needs_input_grad[2]:
            grad_b = grad.flatten(0, 1).t() @ (ys * s[:, None, :]).flatten(0, 1)  # (d_out, R_c)
        if ctx.needs_input_grad[3]:
            grad_s = torch.bmm(gz.transpose(1, 2), ys).diagonal(dim1=1, dim2=2)  # (n, R_c): sum over tokens of gz*ys
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gys = gz * s[:, None, :]  # (n, L, R_c)
            grad_a = gys.flatten(0, 1).t() @ x.flatten(0, 1) if ctx.needs_input_grad[1] else None  # (R_c, d_in)
            grad_x = gys @ a if ctx.needs_input_grad[0] else None  # (n, L, d_in)
        return grad_x, grad_a, grad_b, grad_s


class CGCLinear(nn.Module):
    """Wraps a frozen linear layer (nn.Linear, bnb Linear4bit / Linear8bitLt) and adds the CGC-LoRA delta.

    The wrapped layer and its weights are never modified.
    """

    def __init__(self, base_layer: nn.Linear, config: CGCLoraConfig, router: Router, layer_index: int):
        super().__init__()
        self.base_layer = base_layer
        self.layer_index = layer_index  # this layer's slice of the gates' output (cgc.adapter.gates)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        device = _real_device(base_layer)
        self.experts = nn.ModuleDict(
            {
                cluster: ClusterExperts(
                    len(tasks), config, self.in_features, self.out_features, device, cluster in config.extends
                )
                for cluster, tasks in config.clusters.items()
            }
        )
        self.extends = dict(config.extends)  # an extension -> the cluster whose shared experts its tasks mix
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
            scales = part.scales[self.layer_index]  # a view, no kernel
            if part.index is None:
                delta = self.cluster_delta(part.cluster, h, scales, part.single_task)  # (B, L, d_out)
                result = result + delta.reshape(result.shape).to(result.dtype)
            else:
                delta = self.cluster_delta(part.cluster, h.index_select(0, part.index), scales, part.single_task)
                delta = delta.reshape(len(part.index), *result.shape[1:]).to(result.dtype)  # (n, L, d_out)
                result = result.index_add(0, part.index, delta)
        return result

    def cluster_delta(self, cluster: str, h: torch.Tensor, scales: torch.Tensor, single_task: int | None):
        """h (n, L, d_in) -> (n, L, d_out): the experts of `cluster` on its samples. An extension's samples also go
        through the shared experts of the cluster it extends, called as that cluster's module (ZeRO-3 gathers a
        module's parameters when it is called)."""
        delta = self.experts[cluster](h, scales, single_task)
        parent = self.extends.get(cluster)
        if parent is not None:
            delta = delta + self.experts[parent](h, scales, None, shared_only=True)
        return delta

    def task_factors(self, cluster: str, local_task: int, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One task's experts on this layer as one LoRA pair (ClusterExperts.task_factors), the shared experts of
        the cluster an extension extends included: A (R, d_in), B (d_out, R), shared rows first."""
        a, b = self.experts[cluster].task_factors(local_task, scales)
        parent = self.extends.get(cluster)
        if parent is None:
            return a, b
        n, shared = self.experts[parent].shared_rows, self.experts[parent]
        a_shared, b_shared = shared.lora_A[:n], shared.lora_B[:, :n] * scales[:n].to(shared.lora_B.dtype)
        return torch.cat([a_shared, a]), torch.cat([b_shared, b], dim=1)

    def delta_weight(self, cluster: str, local_task: int, scales: torch.Tensor) -> torch.Tensor:
        """ΔW_t (d_out, d_in) of one task on this layer (`scales`: its weights on its rank rows, from
        ClusterGates.task_scales), in float32."""
        a, b = self.task_factors(cluster, local_task, scales)
        return b.float() @ a.float()


def _real_device(module: nn.Module) -> torch.device:
    weight = getattr(module, "weight", None)
    if weight is None or weight.device.type == "meta":
        return torch.device("cpu")
    return weight.device
