"""Run identity: what a run is (model, quantization, the `cgc` section, data files with sizes and hashes, seed,
the adapter it grew from (init_from, hashed), and the settings that only steer training), recorded in
`output_dir/cgc_run.json` and in every checkpoint, so that two runs never mix in one directory and a resume never
loads weights into a different shape or placement.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from cgc.adapter.config import SAVED_BEFORE as CGC_SAVED_BEFORE
from cgc.adapter.errors import bulleted
from cgc.training.distributed import any_rank, print0
from cgc.training.run_dir import IDENTITY_FILE, RunDir, RunDirError
from cgc.training.run_lock import OutputDirInUse, RunLock

# A difference in any of these changes parameter shapes or which task uses which experts: resuming across it
# would fail on shapes or, worse, load the wrong experts into a moved task without an error.
SHAPE_KEYS = (
    "model.name_or_path",
    "model.gguf_file",
    "model.quantization",
    "cgc.clusters",
    "cgc.r",
    "cgc.num_shared_experts",
    "cgc.num_task_experts",
    "cgc.target_modules",
    "cgc.r_shared",
    "cgc.r_task",
    "cgc.scaling",
    "cgc.train_gate",
    "cgc.extends",
    "cgc.tasks",
    "adapter.gate_layout",
    "init_from",
    "train.extend_shared",  # which parameters the optimizer holds
)
# How the model's parameters are laid out: "stacked" since the gates of every layer are one tensor per cluster
# (cgc.adapter.gates), "per_layer" before. A checkpoint's module and optimizer states hold that layout.
GATE_LAYOUT = "stacked"
# A key a saved identity lacks was written by a version without it, which had one behaviour: that value.
SAVED_BEFORE = {f"cgc.{key}": value for key, value in CGC_SAVED_BEFORE.items()} | {
    "adapter.gate_layout": "per_layer",
    "init_from": None,
    "init_from_path": None,
    "train.extend_shared": False,
    "train.collective_timeout_s": 1800.0,  # torch's default (30 min), which runs before the key ran under
}
DERIVED = ("cgc.tasks",)  # keys whose value follows from others, which identities before them lack
# What to do about a refused difference, where there is more to say than "resume with the checkpoint's settings".
ADVICE = {
    "adapter.gate_layout": "this checkpoint keeps a gate in every layer (versions before 0.2): finish its run with "
    "the version that wrote it, or start a new run (its saved adapter, adapters/cgc, still loads and exports)",
}


def fingerprint(cfg) -> dict:
    """Dotted key -> value for everything that defines the run (a RecipeConfig in, JSON-ready dict out)."""
    flat = {f"model.{k}": v for k, v in dataclasses.asdict(cfg.model).items()}
    flat |= {f"cgc.{k}": v for k, v in cfg.cgc.to_dict().items()}
    flat |= {f"sampler.{k}": v for k, v in dataclasses.asdict(cfg.sampler).items()}
    flat |= {f"train.{k}": v for k, v in dataclasses.asdict(cfg.train).items()}
    flat["seed"] = cfg.seed
    flat["adapter.gate_layout"] = GATE_LAYOUT
    flat["data.train_files"] = [describe(Path(p)) for p in cfg.data.train_files]
    flat["cgc.tasks"] = cfg.cgc.tasks  # the ids, in order (cgc.clusters compares as a mapping: order-blind)
    # a run grown from a trained adapter (cgc.adapter.growth): which one, by its files' hash (its path may change)
    grown_from = describe(Path(cfg.init_from)) if cfg.init_from else None
    flat["init_from"] = grown_from and grown_from["sha256"]
    flat["init_from_path"] = grown_from and grown_from["path"]
    flat |= {f"data.{k}": getattr(cfg.data, k) for k in ("format", "task_field", "max_length", "system_prompt")}
    return json.loads(json.dumps(flat))  # tuples -> lists: compares equal to what is read back


def describe(path: Path) -> dict:
    """A data file (or dataset directory) by path, size and SHA-256 of its bytes."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return {"path": str(path), "bytes": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest()}


def differences(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """-> (differences that refuse a resume, differences that are allowed), each as "key: saved -> now"."""
    refused, allowed = [], []
    for key in sorted(set(saved) | set(now)):
        if key in DERIVED and key not in saved:
            continue  # an identity written before the key: what it derives from is compared already
        before = saved.get(key, SAVED_BEFORE.get(key))
        if before != now.get(key):
            line = f"{key}: {json.dumps(before)} -> {json.dumps(now.get(key))}"
            (refused if key in SHAPE_KEYS else allowed).append(line)
    return refused, allowed


def holds_a_run(out: Path) -> bool:
    """Checkpoints or metrics of some run are in `out`."""
    run = RunDir(out)
    return run.metrics.exists() or (run.checkpoints.is_dir() and any(run.checkpoints.iterdir()))


def claim_output_dir(cfg, out: Path, rank: int) -> dict:
    """`out` belongs to this run (a RecipeConfig): rank 0 takes its lock for the run's life (cgc.training.run_lock;
    another live run there is refused), then one holding another run is refused with resume=none (RunDirError), or
    moved aside with overwrite=true; this run's identity is written to `out`/cgc_run.json. A collective.
    -> the identity."""
    lock_output_dir(out, rank)
    # rank 0 looks, every rank learns the answer: all take the same branches, so the same collectives
    if any_rank(rank == 0 and cfg.resume == "none" and holds_a_run(out)):
        if not cfg.overwrite:
            raise RunDirError(refusal_to_overwrite(out))
        old_lock = HELD.pop() if rank == 0 else None
        if rank == 0:
            print0(f"overwrite=true: moved the previous run aside to {move_aside(out)}")
        lock_output_dir(out, rank)  # the new directory's, before the old lock (now aside with the old run) goes
        if old_lock is not None:
            old_lock.release()
    identity = fingerprint(cfg)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / IDENTITY_FILE).write_text(json.dumps(identity, indent=1) + "\n")
    return identity


HELD: list[RunLock] = []  # rank 0's lock of this process's run, held until the process ends


def lock_output_dir(out: Path, rank: int) -> None:
    """Rank 0 locks `out` (RunLock); every rank raises RunDirError when another live run holds it."""
    refused = ""
    if rank == 0:
        try:
            HELD.append(RunLock(out).acquire())
        except OutputDirInUse as err:
            refused = str(err)
    if any_rank(bool(refused)):
        raise RunDirError(refused or f"output_dir {out} is in use by another run (rank 0 names it)")


def refusal_to_overwrite(out: Path) -> str:
    return (
        f"output_dir {out} holds another run (checkpoints or metrics.jsonl) and resume is none. Either continue it "
        "with resume=latest, or start over with overwrite=true, which moves the old run aside (never deletes it)."
    )


def move_aside(out: Path) -> Path:
    """Rename `out` to `<out>.replaced-<time>` (same file system: a rename, nothing copied or deleted)."""
    aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(aside)
    return aside


def check_resume(tag_dir: Path, now: dict) -> list[str]:
    """Raise ValueError listing each difference that forbids resuming from `tag_dir`; -> the allowed ones."""
    path = tag_dir / IDENTITY_FILE
    if not path.is_file():  # checkpoints of earlier versions carry no identity
        return []
    refused, allowed = differences(json.loads(path.read_text()), now)
    if refused:
        raise ValueError(
            bulleted(
                f"cannot resume from {tag_dir}: the run changed in what decides parameter shapes or task placement",
                refused,
            )
            + "".join(f"\n{ADVICE[line.split(':')[0]]}." for line in refused if line.split(":")[0] in ADVICE)
            + "\nResume with the checkpoint's settings, or start a new run in another output_dir."
        )
    return allowed
