"""Distributed helpers shared by the recipes: starting the process group on the right device, rank-0 printing,
ZeRO-3 gathering, and every collective the recipes run themselves.

Collectives. The recipes' own reductions (metrics, the preemption flag, peak memory, evaluation answers,
barriers) carry a few host numbers or Python objects. NCCL rejects CPU tensors, so under NCCL they run over a
gloo *side group* created once, right after the process group starts; under gloo the default group serves.
Host values stay on the host (no device copy and sync per step, nothing queued on NCCL streams beside
DeepSpeed's), and the same code runs on every backend. No other module calls a `torch.distributed` collective
(a test checks the sources, and one runs these helpers under a stand-in NCCL backend).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from pathlib import Path

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


def free_port() -> int:
    """A TCP port free on this machine now, for a rendezvous (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SIDE_GROUP = None  # the gloo group of the recipes' collectives when the default backend is not gloo


def local_device() -> torch.device:
    """This process's device: `cuda:LOCAL_RANK` when CUDA is available (one GPU per local rank), else the CPU.
    A process that sees a single GPU uses it whatever its LOCAL_RANK (schedulers that bind one GPU per task
    through CUDA_VISIBLE_DEVICES, e.g. srun --gpus-per-task=1)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    if local >= count:
        raise RuntimeError(f"LOCAL_RANK={local} but this process sees only {count} GPUs: start one process per GPU")
    return torch.device("cuda", local)


def start_process_group(init=None, timeout_s: float | None = None) -> tuple[int, int]:
    """Select this rank's GPU before anything touches CUDA, start the process group (nccl on GPUs, gloo on CPU
    ranks) with `init(backend)` (default `torch.distributed.init_process_group`; the recipe passes DeepSpeed's),
    then create the side group for the collectives below; both with `timeout_s` per collective (None: torch's
    default), given to `init` as `timeout=`. -> (rank, world size)"""
    device = local_device()
    if device.type == "cuda":
        # Before init: NCCL binds each rank's communicator to the current device, and bitsandbytes quantizes on
        # it. Without this every local rank would put its CUDA context and its model on GPU 0.
        torch.cuda.set_device(device)
    try:
        timeout = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
        (init or dist.init_process_group)("nccl" if device.type == "cuda" else "gloo", **timeout)
    except RuntimeError as err:  # torch's DistNetworkError among them
        if "address already in use" not in str(err).lower() and "eaddrinuse" not in str(err).lower():
            raise
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise PortInUseError(
            f"the master port {where} is already in use (another job, or one that has not ended yet): start with a "
            f"free one, e.g. `--master_port {free_port()}` for deepspeed, `--master_port` for torchrun, or "
            "MASTER_PORT=... for launch/local.sh (which picks a free one when MASTER_PORT is unset)"
        ) from None
    make_side_group(timeout_s=timeout_s)
    release_shared_memory_name()
    return dist.get_rank(), dist.get_world_size()


class PortInUseError(RuntimeError):
    """The process group's master port is taken: the message names it and a free one."""


SHM_DIR = Path("/dev/shm")


def release_shared_memory_name() -> None:
    """Remove the name of this rank's DeepSpeed CPU all-reduce buffer from /dev/shm (a collective call).

    DeepSpeed's shm comm op (CPU ranks) creates a 66 MB shared-memory file per rank, named after user, master
    address, port and rank, and never unlinks it: every run left them behind until /dev/shm filled the machine's
    memory. Once every rank has opened its peers' buffers (they do inside init; the barrier makes sure), the name
    can go: the mappings stay valid and the memory is freed when the ranks exit, however they exit."""
    barrier()
    port = os.environ.get("MASTER_PORT", "")
    for path in SHM_DIR.glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{dist.get_rank()}"):
        path.unlink(missing_ok=True)


def make_side_group(force: bool = False, timeout_s: float | None = None) -> None:
    """Create the gloo side group (a collective call: every rank, once, right after the process group starts).
    `force` creates it under gloo too (tests)."""
    global _SIDE_GROUP
    if force or dist.get_backend() != "gloo":
        timeout = None if timeout_s is None else datetime.timedelta(seconds=timeout_s)
        _SIDE_GROUP = dist.new_group(backend="gloo", timeout=timeout)


def _group():
    """The group of the recipes' collectives: the side group, or the default group when that is gloo."""
    if _SIDE_GROUP is None and dist.get_backend() != "gloo":
        raise RuntimeError(
            "cgc.training.distributed: the process group's backend is not gloo and no side group exists; start it with "
            "cgc.training.distributed.start_process_group (or call make_side_group on every rank right after init)"
        )
    return _SIDE_GROUP


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if _active():
        dist.barrier(group=_group())


@contextlib.contextmanager
def rank0_first():
    """Rank 0 runs the block first (e.g. writes the `datasets` cache), the others then read what it wrote."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)  # host numbers: CPU tensors over the gloo group
    if _active():
        dist.all_reduce(tensor, group=_group())
    return tensor.tolist()


def max_over_ranks(value: float) -> float:
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_group())
    return tensor.item()


def any_rank(flag: bool) -> bool:
    return all_reduce_sum([float(flag)])[0] > 0


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (a one-element list without a process group)."""
    if not _active():
        return [obj]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, obj, group=_group())
    return everyone


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


def threads_per_rank(configured: int | None, on_gpu: bool) -> int | None:
    """CPU threads for this rank's torch, or None to leave torch's default. `configured` wins; then the
    OMP_NUM_THREADS the user set; then, on CPU ranks, the cores this process may run on divided by the ranks on
    its node (each rank would otherwise start a thread per core, and the ranks' threads fight over the cores)."""
    if configured is not None:
        return configured
    if os.environ.get("OMP_NUM_THREADS") or on_gpu:
        return None
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)  # torchrun, deepspeed
    return max(1, len(os.sched_getaffinity(0)) // local_ranks)
