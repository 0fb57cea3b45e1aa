"""The GPU paths, checked on CPU: collectives only through cgc.training.distributed (over the gloo side group when the
backend is NCCL), one device per local rank chosen before the process group starts, refused combinations, and
CUDA generator states in the checkpoint (stand-ins where no GPU exists)."""

import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cgc.models.base_model as base_model
import cgc.training.distributed as cd
from cgc.recipe.compatibility import MachineFacts, unsupported_combinations
from cgc.training import checkpoint
from cgc.training.distributed import free_port
from tests.conftest import ROOT

COLLECTIVES = (
    "all_reduce|all_gather|all_gather_object|all_gather_into_tensor|broadcast|broadcast_object_list|reduce|"
    "reduce_scatter|reduce_scatter_tensor|gather|gather_object|scatter|scatter_object_list|all_to_all|barrier"
)


def test_no_module_but_cgc_distributed_calls_a_collective():
    call = re.compile(rf"\b(?:dist|torch\.distributed)\.({COLLECTIVES})\(")
    offenders = []
    for path in [*ROOT.glob("cgc/**/*.py"), *ROOT.glob("recipes/*.py")]:
        if path.name != "distributed.py":
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in call.finditer(path.read_text())]
    assert not offenders, offenders


def _helpers_under_a_stand_in_nccl_backend(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        real_get_backend = dist.get_backend
        dist.get_backend = lambda group=None: "nccl" if group is None else real_get_backend(group)
        cd.make_side_group()  # what start_process_group does under NCCL
        side = cd._SIDE_GROUP
        calls = []

        def checked(name):
            real = getattr(dist, name)

            def run(*args, group=None, **kwargs):
                # NCCL would reject a CPU tensor on its default group: every call must name the gloo side group.
                assert group is side, f"{name} called on group {group}"
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                assert all(t.device.type == "cpu" for t in tensors), name
                calls.append(name)
                return real(*args, group=group, **kwargs)

            return run

        for name in ("all_reduce", "all_gather_object", "barrier"):
            setattr(dist, name, checked(name))
        results = [
            cd.all_reduce_sum([1.0, float(rank)]),
            cd.max_over_ranks(rank * 10.0),
            cd.any_rank(rank == 1),
            cd.gather_objects({"rank": rank}),
        ]
        cd.barrier()
        with cd.rank0_first():
            pass
        torch.save({"results": results, "calls": calls}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_every_helper_runs_over_the_gloo_side_group_when_the_backend_is_nccl(tmp_path):
    out = str(tmp_path / "result")
    mp.spawn(_helpers_under_a_stand_in_nccl_backend, args=(2, free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        saved = torch.load(f"{out}.{rank}")
        assert saved["results"] == [[2.0, 1.0], 10.0, True, [{"rank": 0}, {"rank": 1}]]
        assert set(saved["calls"]) == {"all_reduce", "all_gather_object", "barrier"}


def test_a_non_gloo_backend_without_the_side_group_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cd, "_SIDE_GROUP", None)
    monkeypatch.setattr(cd.dist, "get_backend", lambda group=None: "nccl")
    with pytest.raises(RuntimeError, match="no side group exists"):
        cd._group()


def test_each_local_rank_gets_its_own_gpu_before_the_process_group_starts(monkeypatch):
    events = []
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: events.append(("set_device", str(device))))
    monkeypatch.setattr(cd, "make_side_group", lambda **kwargs: events.append(("side_group",)))
    monkeypatch.setattr(cd.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(cd.dist, "get_world_size", lambda: 8)
    assert cd.local_device() == torch.device("cuda", 3)
    assert base_model.quantized_device_map() == {"": 3}  # bitsandbytes quantizes on this rank's GPU
    assert cd.start_process_group(lambda backend: events.append(("init", backend))) == (3, 8)
    assert events == [("set_device", "cuda:3"), ("init", "nccl"), ("side_group",)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU bound per task by the scheduler
    assert cd.local_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(RuntimeError, match="LOCAL_RANK=3 but this process sees only 2 GPUs"):
        cd.local_device()


def test_without_cuda_the_device_is_the_cpu_and_nothing_is_placed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cd.local_device() == torch.device("cpu") and base_model.quantized_device_map() is None


GPU = MachineFacts(cuda=True, bf16=True, cpu_adam_prebuilt=False, cuda_toolkit=True)


def test_unsupported_combinations_are_refused_with_what_to_use_instead():
    zero3, zero2 = {"zero_optimization": {"stage": 3}}, {"zero_optimization": {"stage": 2}}
    (int8,) = unsupported_combinations("int8", "float32", zero3, GPU)
    assert "int8 with ZeRO-3" in int8 and "nf4" in int8 and "zero2.json" in int8
    assert unsupported_combinations("int8", "float32", zero2, GPU) == []
    assert unsupported_combinations("nf4", "bfloat16", zero3, GPU) == []
    offload = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    no_toolkit = MachineFacts(cuda=True, bf16=True, cpu_adam_prebuilt=False, cuda_toolkit=False)
    (adam,) = unsupported_combinations("nf4", "bfloat16", offload, no_toolkit)
    assert "DS_BUILD_CPU_ADAM=1" in adam and "zero3.json" in adam
    assert unsupported_combinations("nf4", "bfloat16", offload, GPU) == []  # the toolkit can build it
    cpu = MachineFacts(cuda=False, bf16=False, cpu_adam_prebuilt=False, cuda_toolkit=False)
    assert unsupported_combinations("nf4", "float32", offload, cpu) == []  # CPU ranks build CPU Adam with g++
    old_gpu = MachineFacts(cuda=True, bf16=False, cpu_adam_prebuilt=False, cuda_toolkit=True)
    (bf16,) = unsupported_combinations("nf4", "bfloat16", zero3, old_gpu)
    assert "without bfloat16 support" in bf16 and "float16" in bf16
    assert unsupported_combinations("none", "float32", {"bf16": {"enabled": True}}, old_gpu)


def test_cuda_generator_states_are_saved_and_restored_with_the_rank_state(monkeypatch):
    states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]  # two GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    saved = checkpoint.rng_state()
    assert set(saved) == {"python", "numpy", "torch", "cuda"} and saved["cuda"] is states
    checkpoint.set_rng_state(saved)
    assert restored == [states]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in checkpoint.rng_state()
    with pytest.raises(ValueError, match="CUDA generator states but this process sees no GPU"):
        checkpoint.set_rng_state(saved)
