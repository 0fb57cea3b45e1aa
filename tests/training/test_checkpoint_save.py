"""cgc.training.checkpoint.save without a process group: a checkpoint directory is whole or absent, DeepSpeed's `latest`
names only whole ones, and keep_last prunes old ones but never the one a run resumed from."""

import json
import types
from pathlib import Path

import pytest
import torch

from cgc.training import checkpoint as ckpt


class Engine:
    """Writes what DeepSpeed would (one file per tag); `killed_after_writing` stops half-way like a SIGKILL."""

    def __init__(self, killed_after_writing: bool = False):
        self.killed_after_writing = killed_after_writing

    def save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters):
        assert save_latest is False and exclude_frozen_parameters  # the recipe writes `latest` itself
        directory = Path(save_dir) / tag
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "mp_rank_00_model_states.pt").write_text(f"run {self.run} step {client_state['step']}")
        if self.killed_after_writing:
            raise KeyboardInterrupt("killed")

    def zero_optimization_stage(self):
        return 2

    run = "a"


class Sampler:
    def state_dict(self):
        return {"seed": 0, "epoch": 0, "position": 3, "world_size": 1}


def model_file(checkpoints: Path, step: int) -> str:
    return (checkpoints / f"step_{step}" / "mp_rank_00_model_states.pt").read_text()


def test_a_save_is_renamed_into_place_whole(tmp_path):
    saved = ckpt.save(Engine(), Sampler(), tmp_path, 2, world_size=1)
    assert saved == tmp_path / "step_2" and (saved / ckpt.COMPLETE_MARKER).is_file()
    assert (saved / "cgc_rank0.pt").is_file() and model_file(tmp_path, 2) == "run a step 2"
    assert (tmp_path / "latest").read_text() == "step_2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_2"]  # no temporary left


def test_a_resave_killed_half_way_leaves_the_old_checkpoint_whole(tmp_path):
    ckpt.save(Engine(), Sampler(), tmp_path, 2, world_size=1)
    second = Engine(killed_after_writing=True)
    second.run = "b"
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(second, Sampler(), tmp_path, 2, world_size=1)
    assert model_file(tmp_path, 2) == "run a step 2"  # the old save, untouched, with its own marker
    assert json.loads((tmp_path / "step_2" / ckpt.COMPLETE_MARKER).read_text())["step"] == 2
    assert not (tmp_path / ".step_2.tmp" / ckpt.COMPLETE_MARKER).exists()  # the partial one is never marked
    assert ckpt.resolve_resume("latest", tmp_path) == tmp_path / "step_2"
    assert (tmp_path / "latest").read_text() == "step_2"
    second.killed_after_writing = False
    ckpt.save(second, Sampler(), tmp_path, 2, world_size=1)  # a later save clears the leftover and replaces
    assert model_file(tmp_path, 2) == "run b step 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_2"]


def test_keep_last_prunes_old_checkpoints_but_not_the_resumed_one(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save(Engine(), Sampler(), tmp_path, step, world_size=1, keep_last=2, keep=tmp_path / "step_1")
    assert ckpt.completed_steps(tmp_path) == [1, 3, 4]
    ckpt.save(Engine(), Sampler(), tmp_path, 5, world_size=1, keep_last=2)
    assert ckpt.completed_steps(tmp_path) == [4, 5]
    assert (tmp_path / "latest").read_text() == "step_5"


def test_a_universal_resume_gives_each_parameter_group_its_own_hyperparameters_back(tmp_path):
    # DeepSpeed's ZeRO-3 universal loader copies the first saved group's values (lr, initial_lr, ...) into every
    # group; the gates' group must get its own learning rate back.
    experts, gates = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [experts], "lr": 1e-3, "name": "experts"}, {"params": [gates], "lr": 1e-2, "name": "gates"}]
    saved = torch.optim.AdamW(groups)
    (tmp_path / "zero").mkdir()
    torch.save({"optimizer_state_dict": saved.state_dict()}, tmp_path / "zero" / "optimizer_state.pt")
    # what DeepSpeed's loader leaves: the first group's values in both
    loaded = torch.optim.AdamW([{"params": [experts], "lr": 1e-3, "name": "experts"}, {"params": [gates]}])
    loaded.param_groups[1].update(lr=1e-3, name="experts")
    engine = types.SimpleNamespace(optimizer=types.SimpleNamespace(optimizer=loaded))
    ckpt.restore_group_hyperparameters(engine, tmp_path)
    assert [g["lr"] for g in loaded.param_groups] == [1e-3, 1e-2]
    assert [g["name"] for g in loaded.param_groups] == ["experts", "gates"]
    assert loaded.param_groups[1]["params"] == [gates]


class FullDiskEngine(Engine):
    """Fails the way torch.save fails on a full disk (a RuntimeError from its C++ stream, no errno)."""

    def save_checkpoint(self, save_dir, tag, client_state, save_latest, exclude_frozen_parameters):
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos; basic_ios::clear: iostream error")


def test_a_full_disk_during_a_save_says_so_and_names_the_whole_checkpoint(tmp_path, monkeypatch):
    ckpt.save(Engine(), Sampler(), tmp_path, 2, world_size=1)
    with pytest.raises(RuntimeError, match="iostream error"):  # a disk with room: the error as it was
        ckpt.save(FullDiskEngine(), Sampler(), tmp_path, 4, world_size=1)
    usage = types.SimpleNamespace(total=10**9, used=10**9 - 4096, free=4096)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(SystemExit) as stopped:
        ckpt.save(FullDiskEngine(), Sampler(), tmp_path, 4, world_size=1)
    message = str(stopped.value.code)
    assert "is full (4,096 bytes free) while saving step 4" in message and f"{tmp_path / 'step_2'} is whole" in message
    assert ckpt.resolve_resume("latest", tmp_path) == tmp_path / "step_2"
