"""DeepSpeed's just-in-time ops: built once at install, found where the environment keeps them, and a stale build
lock named instead of waited on forever.

DeepSpeed compiles some ops the first time a process needs them: on CPU ranks the shared-memory comm op inside
`deepspeed.init_distributed`, with an optimizer-offload config `DeepSpeedCPUAdam`. torch's extension loader
guards each build with a `lock` file in the op's build directory; a process killed while it compiles leaves
that file behind, and every later process then waits on it forever, silently. So:

- the build directory lives inside the environment (`TORCH_EXTENSIONS_DIR=<venv>/torch_extensions`, unless the
  user set one), apart from other environments' builds, and moves with the venv;
- `make install` builds the ops this machine's recipes use (`python -m cgc build-ops`: the comm op on
  CPU machines, CPU Adam for the offload config on CUDA machines), so a normal run compiles nothing;
- before `init_distributed` the recipes look for a `lock` of an op they are about to load: one older than
  `STALE_AFTER_S` stops the run (exit 2) with a message naming the file. We do not delete it ourselves: the
  directory may be shared by several nodes or processes whose builds we cannot see;
- when a build is about to happen anyway, one line on stderr says so.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from cgc.adapter.errors import CGCError

SHM_COMM = "deepspeed_shm_comm"  # DeepSpeed's ShareMemCommBuilder.NAME: CPU ranks, inside init_distributed
CPU_ADAM = "cpu_adam"  # CPUAdamBuilder.NAME: DeepSpeedCPUAdam, for optimizer-offload configs
# Build time measured on the 2-core development machine (`python -m cgc build-ops` into an empty
# TORCH_EXTENSIONS_DIR, CPU build of both ops).
BUILD_SECONDS = {SHM_COMM: 55, CPU_ADAM: 75}
STALE_AFTER_S = 300  # several times the longest build above: a lock this old belongs to no running build


class StaleBuildLockError(CGCError):
    """A build lock left by an interrupted build: every run would wait on it forever."""


def prepare(ds_config: dict, cuda: bool, announce: bool) -> None:
    """What a recipe does before DeepSpeed may load an op (before `init_distributed`): point torch at the
    environment's extensions directory, refuse a stale build lock of an op it will load (StaleBuildLockError,
    naming the file), and when `announce`, say which ops will be compiled."""
    extensions = use_environment_extensions_dir()
    ops = ops_for(ds_config, cuda)
    stale = stale_locks(extensions, ops)
    if stale:
        raise StaleBuildLockError(stale_lock_message(stale))
    if announce:
        announce_builds(extensions, ops)


def use_environment_extensions_dir() -> Path:
    """Point torch's extension loader at `<venv>/torch_extensions` (unless TORCH_EXTENSIONS_DIR is set) and
    return the directory. Call before DeepSpeed loads any op."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def ops_for(ds_config: dict, cuda: bool) -> list[str]:
    """The JIT ops a recipe run will load with this DeepSpeed config on this machine."""
    ops = [] if cuda else [SHM_COMM]
    if "offload_optimizer" in ds_config.get("zero_optimization", {}):
        ops.append(CPU_ADAM)
    return ops


def stale_locks(root: Path, ops: list[str], now: float | None = None) -> list[Path]:
    """`lock` files older than STALE_AFTER_S in the build directories of `ops` (versioned ones included: torch
    builds `<op>_v1`, ... when sources or flags change)."""
    now = time.time() if now is None else now
    found = []
    for op in ops:
        for lock in sorted(root.glob(f"{op}*/lock")):
            if now - lock.stat().st_mtime > STALE_AFTER_S:
                found.append(lock)
    return found


def stale_lock_message(locks: list[Path]) -> str:
    names = "\n  ".join(str(p) for p in locks)
    return (
        f"a DeepSpeed op build lock older than {STALE_AFTER_S // 60} minutes exists:\n  {names}\n"
        "It is the leftover of a build that was interrupted (Ctrl-C, a scheduler's kill, a timeout); every run "
        "would wait on it forever. No build is running if no other process of yours is starting up: delete the "
        "file and run again (the op is then built once, or run `make install`)."
    )


def announce_builds(root: Path, ops: list[str]) -> list[str]:
    """One stderr line per op that will be compiled (no built module in its directory). -> those ops."""
    building = [op for op in ops if not list(root.glob(f"{op}*/{op}*.so"))]
    for op in building:
        print(
            f"building DeepSpeed op {op} (first run only, ~{BUILD_SECONDS[op]} s here; `make install` builds it ahead)",
            file=sys.stderr,
            flush=True,
        )
    return building


def build(ops: list[str]) -> None:
    """Compile `ops` into the extensions directory (what `make install` runs)."""
    from deepspeed.accelerator import get_accelerator

    builders = {SHM_COMM: "ShareMemCommBuilder", CPU_ADAM: "CPUAdamBuilder"}
    for op in ops:
        builder = get_accelerator().create_op_builder(builders[op])
        if builder is None or not builder.is_compatible():
            print(f"DeepSpeed op {op}: not used on this machine, skipped", flush=True)
            continue
        start = time.time()
        builder.load()
        print(
            f"DeepSpeed op {op}: ready in {use_environment_extensions_dir()} ({time.time() - start:.0f} s)", flush=True
        )


def build_for_this_machine() -> None:
    """What `make install` runs (`python -m cgc build-ops`). CPU machines: the comm op every recipe run loads.
    CUDA machines: CPU Adam, which ds_configs/zero3_offload.json needs (on CPU ranks that config builds it on first
    use, announced, rather than slowing every install)."""
    use_environment_extensions_dir()
    build([CPU_ADAM] if torch.cuda.is_available() else [SHM_COMM])
