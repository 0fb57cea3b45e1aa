"""Checkpoints of the recipe: saving, choosing what to resume from, and restoring, around DeepSpeed's
`save_checkpoint` / `load_checkpoint`.

Layout: `<output_dir>/checkpoints/step_{N}/` holds one DeepSpeed tag (trainable state only), one
`cgc_rank{r}.pt` per rank (sampler state and RNG states) and, written last by rank 0 after a barrier that every
rank reaches only once its own files are flushed to disk, `cgc_complete.json`. Saves are written under a hidden
`.step_{N}.tmp` and renamed into place only then (`save`), so a `step_N` directory is whole; one without the
marker (from older versions, or copied half-way) is skipped by resume with a warning and never loaded; so is one
whose files differ from what its marker lists (size, CRC-32: cgc.training.checkpoint_marker).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from cgc.training.checkpoint_marker import COMPLETE_MARKER, damage, mark_complete, read_marker
from cgc.training.distributed import barrier, print0, rank
from cgc.training.run_dir import IDENTITY_FILE, write_text_atomically
from cgc.training.run_identity import check_resume

STEP_DIR = re.compile(r"^step_(\d+)$")


def rank_state_path(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"cgc_rank{rank}.pt"


def rng_state() -> dict:
    """Every generator a training step may draw from; "cuda" holds the state of every GPU this rank sees (dropout
    on a GPU draws from the CUDA generator, not torch's CPU one)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        if not torch.cuda.is_available():
            raise ValueError("this checkpoint holds CUDA generator states but this process sees no GPU")
        torch.cuda.set_rng_state_all(state["cuda"])


def write_rank_state(tag_dir: Path, rank: int, sampler_state: dict) -> None:
    torch.save({"sampler": sampler_state, "rng": rng_state()}, rank_state_path(tag_dir, rank))


def read_rank_state(tag_dir: Path, rank: int) -> dict:
    path = rank_state_path(tag_dir, rank)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the checkpoint was written by fewer ranks than this run has; resuming on a different "
            "number of ranks needs DeepSpeed's universal checkpoint (see README)"
        )
    # Our own file: numpy RNG state needs full unpickling.
    return torch.load(path, weights_only=False)


def completed_steps(checkpoints: Path) -> list[int]:
    """Steps whose checkpoint is complete, ascending; incomplete ones are reported and skipped."""
    steps = []
    if not checkpoints.is_dir():
        return steps
    for entry in sorted(checkpoints.iterdir()):
        match = STEP_DIR.match(entry.name)
        if not match or not entry.is_dir():
            continue
        if (entry / COMPLETE_MARKER).is_file():
            steps.append(int(match.group(1)))
        else:
            warnings.warn(
                f"skipping incomplete checkpoint {entry} (no {COMPLETE_MARKER}: its save did not finish)", stacklevel=2
            )
    return sorted(steps)


def resolve_resume(resume: str, checkpoints: Path) -> Path | None:
    """The checkpoint directory to resume from: None for `none` (or `latest` with nothing saved yet)."""
    if resume == "none":
        return None
    if resume == "latest":  # the newest whole one: a damaged checkpoint is skipped, saying which file
        for step in reversed(completed_steps(checkpoints)):
            tag_dir = checkpoints / f"step_{step}"
            problem = damage(tag_dir)
            if problem is None:
                return tag_dir
            warnings.warn(f"skipping damaged checkpoint {tag_dir}: {problem}", stacklevel=2)
        return None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(f"resume={resume}: not a complete cgc checkpoint (no {COMPLETE_MARKER})")
    problem = damage(path)
    if problem:
        raise ValueError(f"resume={resume}: the checkpoint is damaged: {problem}")
    return path


def save(
    engine,
    sampler,
    checkpoints: Path,
    step: int,
    world_size: int,
    keep_last: int | None = None,
    keep: Path | None = None,
    identity: dict | None = None,
) -> Path:
    """A checkpoint that is whole or absent: every rank writes its DeepSpeed shard and its own state into a hidden
    `.step_N.tmp` directory and flushes them to disk; once all have, rank 0 marks it complete and renames it to
    `step_N` (a re-save of an existing `step_N` replaces it only then, so no `step_N` ever holds a mix of two
    saves). DeepSpeed's own `latest` pointer is written after the rename, so it only ever names a whole
    checkpoint. `keep_last`: keep the newest N complete checkpoints, never `keep` (the one this run resumed from).
    `identity`: the run's fingerprint (cgc.training.run_identity), stored with the checkpoint for resume checks.
    """
    tag, partial = f"step_{step}", checkpoints / f".step_{step}.tmp"
    if rank() == 0 and partial.exists():  # the leftover of a save that was killed
        shutil.rmtree(partial)
    barrier()
    try:
        engine.save_checkpoint(
            str(checkpoints),
            tag=partial.name,
            client_state={"step": step},
            save_latest=False,
            exclude_frozen_parameters=True,
        )
        write_rank_state(partial, rank(), sampler.state_dict())
        _flush(partial)
    except (OSError, RuntimeError) as err:  # torch.save on a full disk: "basic_ios::clear: iostream error"
        if getattr(err, "errno", None) != errno.ENOSPC and shutil.disk_usage(checkpoints).free >= FULL_BELOW:
            raise
        raise DiskFullError(checkpoints, step) from None
    barrier()  # every rank's files are on disk before the marker says the checkpoint is whole
    final = checkpoints / tag
    if rank() == 0:
        if identity is not None:
            (partial / IDENTITY_FILE).write_text(json.dumps(identity, indent=1))
        mark_complete(partial, step, world_size, engine.zero_optimization_stage())
        replaced = checkpoints / f".{tag}.replaced"
        if final.exists():
            os.replace(final, replaced)
        os.replace(partial, final)  # atomic: step_N is absent or whole
        write_text_atomically(checkpoints / "latest", tag)  # DeepSpeed's pointer, for its own tools
        if replaced.exists():
            shutil.rmtree(replaced)
        if keep_last:
            _prune(checkpoints, keep_last, keep)
    barrier()
    return final


FULL_BELOW = 16 << 20  # bytes free under which a failed save is put down to a full disk


class DiskFullError(SystemExit):
    """A save that ran out of disk: exits (code 1, no traceback, on whichever rank hit it) saying so and naming the
    newest whole checkpoint, which the failed save left as it was."""

    def __init__(self, checkpoints: Path, step: int):
        steps = completed_steps(checkpoints)
        whole = f"{checkpoints / f'step_{steps[-1]}'} is whole" if steps else "no earlier checkpoint exists"
        free = shutil.disk_usage(checkpoints).free
        super().__init__(
            f"error: the disk holding {checkpoints} is full ({free:,} bytes free) while saving step {step}: that "
            f"save is lost, {whole} (resume=latest takes it). Free space, then resume"
        )


def _flush(directory: Path) -> None:
    """fsync every file of `directory`, then the directory itself (its entries)."""
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prune(checkpoints: Path, keep_last: int, keep: Path | None) -> None:
    steps = completed_steps(checkpoints)
    for old in steps[:-keep_last]:
        path = checkpoints / f"step_{old}"
        if keep is None or path.resolve() != keep.resolve():
            shutil.rmtree(path)


def prepare_resume(resume: str, checkpoints: Path, world_size: int, ds_config: dict) -> Path | None:
    """The checkpoint to resume from (None: start fresh), checked against this run's world size before the engine
    exists; a universal checkpoint sets DeepSpeed's `load_universal` in `ds_config`. Raises ValueError."""
    tag_dir = resolve_resume(resume, checkpoints)
    if tag_dir is None:
        return None
    if is_universal(tag_dir):
        ds_config.setdefault("checkpoint", {})["load_universal"] = True
    elif saved_world_size(tag_dir) != world_size:
        raise ValueError(
            f"{tag_dir} was saved by {saved_world_size(tag_dir)} ranks and this run has {world_size}: "
            f"convert it first with `python -m cgc to-universal {tag_dir}` and resume from the "
            "*_universal directory it writes"
        )
    return tag_dir


def choose(resume: str, checkpoints: Path, world_size: int, ds_config: dict, identity: dict) -> Path | None:
    """The checkpoint `resume` names, checked before any model loads: complete, saved by this many ranks (or
    universal), and of the same shapes and task placement as the run `identity` (cgc.training.run_identity; the
    safe changes are printed). None: start fresh. Raises ValueError."""
    tag_dir = prepare_resume(resume, checkpoints, world_size, ds_config)
    if tag_dir is not None:
        for change in check_resume(tag_dir, identity):
            print0(f"resuming with a changed setting (allowed): {change}")
    elif resume == "latest":
        print0(f"resume=latest: no complete checkpoint in {checkpoints}; starting at step 0")
    return tag_dir


def load(engine, sampler, tag_dir: Path) -> tuple[int, str]:
    """Restore the engine (trainable state, optimizer, schedule), the sampler and the RNG states.
    -> (the step to continue from, a line saying what was restored)."""
    _, client_state = engine.load_checkpoint(
        str(tag_dir.parent),
        tag=tag_dir.name,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    step = client_state["step"]
    if is_universal(tag_dir):
        restore_group_hyperparameters(engine, tag_dir)
        saved = read_rank_state(tag_dir, 0)["sampler"]
        try:  # the same global micro-batches (e.g. 2 ranks x 4 -> 1 rank x 8): the data continues exactly
            sampler.load_state_dict(saved)
            where = f"data continues at epoch {saved['epoch']}, micro-step {saved['position']}"
        except ValueError:  # positions of other global micro-batches do not map onto this run's: next epoch
            sampler.set_epoch(saved["epoch"] + 1)
            where = (
                f"data restarts at epoch {saved['epoch'] + 1} (keep ranks x micro_batch_size at "
                f"{saved.get('layout', {}).get('examples_per_micro_step', '?')} to continue the epoch exactly)"
            )
        # RNG states are not restored: the ranks' dropout streams do not map onto another number of ranks.
        return step, f"resumed from universal checkpoint {tag_dir} at step {step}; {where}"
    state = read_rank_state(tag_dir, rank())
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return step, f"resumed from {tag_dir} at step {step}"


def resume_step(engine, sampler, resume_dir: Path | None) -> int:
    """`load` when there is a checkpoint to resume from (its message printed). -> the step training starts from."""
    step, message = load(engine, sampler, resume_dir) if resume_dir is not None else (0, "")
    if message:
        print0(message)
    return step


def restore_group_hyperparameters(engine, tag_dir: Path) -> None:
    """Give each optimizer parameter group its own saved hyperparameters (lr, initial_lr, betas, ...) back.

    DeepSpeed 0.19's ZeRO-3 universal loader copies the *first* saved group's values into every group
    (stage3.py, load_hp_checkpoint_state_from_checkpoint_dir_stage3): the gates' group would take the experts'
    learning rate for the first step after the resume. The saved groups are in the optimizer's group order."""
    path = tag_dir / "zero" / "optimizer_state.pt"
    if not path.is_file():
        return
    saved = torch.load(path, weights_only=False)["optimizer_state_dict"]["param_groups"]
    groups = getattr(engine.optimizer, "optimizer", engine.optimizer).param_groups  # the wrapped torch optimizer
    if len(saved) != len(groups):
        raise ValueError(f"{tag_dir} holds {len(saved)} optimizer parameter groups, this run has {len(groups)}")
    for group, values in zip(groups, saved, strict=True):
        group.update({key: value for key, value in values.items() if key != "params"})


def saved_world_size(tag_dir: Path) -> int:
    return read_marker(tag_dir)["world_size"]


def saved_zero_stage(tag_dir: Path) -> int | None:
    """The ZeRO stage the checkpoint was saved with (None: saved before cgc recorded it)."""
    return read_marker(tag_dir).get("zero_stage")


def is_universal(tag_dir: Path) -> bool:
    return bool(read_marker(tag_dir).get("universal"))


def to_universal(tag_dir: Path) -> Path:
    """Convert a complete checkpoint with DeepSpeed's ds_to_universal into `<tag_dir>_universal`, which a run
    with any number of ranks can resume from (the recipe then sets "load_universal" itself)."""
    tag_dir = Path(tag_dir)
    if not (tag_dir / COMPLETE_MARKER).is_file():
        raise ValueError(f"{tag_dir} is not a complete cgc checkpoint (no {COMPLETE_MARKER})")
    problem = damage(tag_dir)
    if problem:  # converted, the damage would get a fresh manifest
        raise ValueError(f"{tag_dir} is damaged: {problem}")
    if saved_zero_stage(tag_dir) == 0:
        raise ValueError(
            f"{tag_dir} was saved without ZeRO partitioning (stage 0: a one-rank run drops stage 1/2, see "
            "deepspeed.partition_single_rank), which DeepSpeed cannot convert to a universal checkpoint; resume it "
            "on one rank, or run with deepspeed.partition_single_rank=true for checkpoints you will convert"
        )
    out = tag_dir.parent / f"{tag_dir.name}_universal"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(tag_dir),
            "--output_folder",
            str(out),
        ],
        check=True,
    )
    # Rank 0's state carries the epoch; sampler positions of another world size do not carry over.
    shutil.copy(rank_state_path(tag_dir, 0), out / "cgc_rank0.pt")
    if (tag_dir / IDENTITY_FILE).is_file():
        shutil.copy(tag_dir / IDENTITY_FILE, out / IDENTITY_FILE)
    info = {k: v for k, v in read_marker(tag_dir).items() if k != "files"}
    mark_complete(out, **{**info, "universal": True})  # the converted files' own manifest
    return out
