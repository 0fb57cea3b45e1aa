"""Small distributed helpers shared by the recipes: rank-0 printing, ZeRO-3 gathering, sums over ranks."""

from __future__ import annotations

import contextlib
import os
import socket
import sys

import torch
import torch.distributed as dist


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def print0(*args, **kwargs) -> None:
    """The one place recipes print from: rank 0 only."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def error_exit(message: str, code: int = 2) -> None:
    """A clear one-message failure (printed once, by rank 0), no traceback."""
    if rank() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def free_port() -> int:
    """A TCP port free on this machine now, for a rendezvous (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def rank0_first():
    """Rank 0 runs the block first (e.g. writes the `datasets` cache), the others then read what it wrote."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def max_over_ranks(value: float) -> float:
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def any_rank(flag: bool) -> bool:
    return all_reduce_sum([float(flag)])[0] > 0


def gathered(params, zero3: bool):
    """Full parameters on every rank inside the block (ZeRO-3 partitions them); a no-op otherwise."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def clear_zero3_gradient_partitions(engine) -> None:
    """Zero ZeRO-3's persistent gradient partitions after an optimizer step.

    Stage 3 assembles each step's gradients from views into one flat buffer that persists across steps, and a
    parameter that got no gradient in a step keeps the last one written there. CGC-LoRA runs one cluster per
    step, so without this the clusters absent from a step would have their previous gradient applied again
    (and counted in the grad norm). ZeRO-2 and plain PyTorch treat them as zero; this restores that.
    """
    optimizer = getattr(engine, "optimizer", None)
    buffer = getattr(optimizer, "grad_partitions_flat_buffer", None)
    if buffer is not None:
        buffer.zero_()
    for flat in getattr(optimizer, "fp32_partitioned_groups_flat", None) or []:
        if flat.grad is not None:  # the CPU-offload path keeps gradients here instead
            flat.grad.zero_()
