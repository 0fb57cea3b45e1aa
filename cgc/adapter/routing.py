"""How per-sample task ids reach the adapted layers without editing any transformers modeling file.

`CGCModel.forward` turns `task_ids` into a `Routing` once per call and stores it on a `Router` that every
`CGCLinear` holds a reference to. Routing reads the task ids on the host (the caller's CPU tensor or list: no
device sync) and puts the few index tensors it makes on the batch's device with non-blocking copies from pinned
memory. The routing of the latest forward stays set after the call returns: activation checkpointing recomputes
layers during backward, after forward has returned, and the recomputation must see the same routing (and the
same gate weights, computed once in the forward). `Router.checkpoint_context` pins the routing of each
checkpointed segment, so it is right even when several forwards run before their backwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from cgc.adapter.config import CGCLoraConfig


@dataclass(frozen=True)
class ClusterSlice:
    """The samples of one cluster in a batch.

    index: their positions in the batch (LongTensor[n]), or None when the slice is the whole batch.
    local_tasks: task index within the cluster for each of those samples (LongTensor[n]).
    single_task: the local task index when all n samples share it (enables the cheaper shared-weight path).
    scales: the cluster's gate weights for every adapted layer (cgc.adapter.gates.ClusterGates), set by the
        model once per forward: one (n, R_c) tensor per layer, or one (R,) on the single-task path.
    """

    cluster: str
    index: torch.Tensor | None
    local_tasks: torch.Tensor
    single_task: int | None
    scales: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class Routing:
    batch_size: int
    slices: tuple[ClusterSlice, ...]

    def repeat_interleave(self, repeats: int) -> Routing:
        """Routing for a batch whose rows were each repeated `repeats` times in place (beam search)."""
        slices = []
        for s in self.slices:
            local = s.local_tasks.repeat_interleave(repeats)
            index = None
            if s.index is not None:
                # (n,) -> (n * repeats,): row i of the original batch becomes rows i*repeats ... i*repeats+repeats-1
                offsets = torch.arange(repeats, device=s.index.device)
                index = (s.index[:, None] * repeats + offsets).reshape(-1)
            scales = s.scales
            if scales is not None and scales[0].dim() == 2:  # per sample: (n, R_c) -> (n * repeats, R_c) a layer
                scales = tuple(layer.repeat_interleave(repeats, dim=0) for layer in scales)
            slices.append(ClusterSlice(s.cluster, index, local, s.single_task, scales))
        return Routing(self.batch_size * repeats, tuple(slices))


class Router:
    """Shared, mutable routing state of one `CGCModel`."""

    def __init__(self, config: CGCLoraConfig):
        self.task_map = config.task_map
        self.current: Routing | None = None
        self._expanded: Routing | None = None

    def route(self, task_ids: torch.Tensor, device: torch.device | str = "cpu", every_cluster: bool = False) -> Routing:
        """Group a batch by cluster. `task_ids`: a CPU tensor (read on the host, never a device sync); the index
        tensors go to `device`. `every_cluster` keeps empty slices, in fixed order, for ZeRO-3 ranks whose
        batches may hold different clusters: all ranks must then call every cluster's submodule."""
        if task_ids.device.type != "cpu":
            raise ValueError(f"route() reads task ids on the host: give a CPU tensor, not one on {task_ids.device}")
        places = [self.task_map.places[t] for t in task_ids.tolist()]  # ids were range-checked by CGCModel
        slices = []
        for ci, cluster in enumerate(self.task_map.clusters):
            positions = [i for i, p in enumerate(places) if p.cluster_index == ci]
            if not positions and not every_cluster:
                continue
            local = [places[i].local_index for i in positions]
            whole = len(positions) == len(places)
            slices.append(
                ClusterSlice(
                    cluster=cluster,
                    index=None if whole else on_device(positions, device),
                    local_tasks=on_device(local, device),
                    single_task=local[0] if local and all(t == local[0] for t in local) else None,
                )
            )
        return Routing(len(places), tuple(slices))

    def set(self, routing: Routing) -> None:
        self.current = routing
        self._expanded = None

    def routing_for(self, batch_size: int) -> Routing:
        """The current routing, expanded when generation repeated each row (num_beams, num_return_sequences)."""
        routing = self.current
        if routing is None:
            raise RuntimeError(
                "a CGC-LoRA layer ran without task ids: call the CGCModel (model(..., task_ids=...) or "
                "model.generate(..., task_ids=...)), not the wrapped base model directly"
            )
        if batch_size == routing.batch_size:
            return routing
        if routing.batch_size == 0 or batch_size % routing.batch_size:
            raise RuntimeError(
                f"a CGC-LoRA layer got a batch of {batch_size} rows but task_ids has {routing.batch_size} entries"
            )
        if self._expanded is None or self._expanded.batch_size != batch_size:
            self._expanded = routing.repeat_interleave(batch_size // routing.batch_size)
        return self._expanded

    @contextlib.contextmanager
    def pinned(self, routing: Routing | None):
        previous, previous_expanded = self.current, self._expanded
        self.set(routing)
        try:
            yield
        finally:
            self.current, self._expanded = previous, previous_expanded

    def checkpoint_context(self):
        """`context_fn` for torch.utils.checkpoint (non-reentrant): recompute under the forward's routing."""
        return contextlib.nullcontext(), self.pinned(self.current)


def on_device(values: list[int], device) -> torch.Tensor:
    """A LongTensor of host values on `device`: through pinned memory and a non-blocking copy on CUDA (no sync)."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.long, device=device)
    return torch.tensor(values, dtype=torch.long, pin_memory=True).to(device, non_blocking=True)
