"""When a one-rank run drops ZeRO stage 1/2 for stage 0 (cgc.recipe.inputs.single_rank_stage)."""

import json

import pytest

from cgc.recipe.inputs import single_rank_stage
from cgc.training.checkpoint import COMPLETE_MARKER


def ds(stage: int, **extra) -> dict:
    return {"zero_optimization": {"stage": stage, "contiguous_gradients": True}, **extra}


def checkpoint(tmp_path, **marker):
    tmp_path.joinpath(COMPLETE_MARKER).write_text(json.dumps({"step": 4, "world_size": 1, **marker}))
    return tmp_path


@pytest.mark.parametrize("stage", [1, 2])
def test_one_float32_rank_runs_stage_0(stage):
    config = ds(stage)
    note = single_rank_stage(config, world=1, resume_dir=None, keep_partitioning=False)
    assert config["zero_optimization"]["stage"] == 0 and f"ZeRO stage {stage}" in note


@pytest.mark.parametrize(
    "config, world, keep",
    [
        (ds(2), 2, False),  # several ranks: ZeRO partitions
        (ds(3), 1, False),  # stage 3 is kept (zero.Init loading, the 4-bit base's sharding path)
        (ds(2, bf16={"enabled": True}), 1, False),  # DeepSpeed's bf16 optimizer: not measured, left alone
        (ds(2), 1, True),  # deepspeed.partition_single_rank=true
    ],
)
def test_the_configured_stage_is_kept(config, world, keep):
    assert single_rank_stage(config, world, resume_dir=None, keep_partitioning=keep) is None
    assert config["zero_optimization"]["stage"] in (2, 3)


@pytest.mark.parametrize(
    "marker, keep, stage",
    [
        ({"zero_stage": 2}, False, 2),  # its optimizer state is in ZeRO shards
        ({}, False, 2),  # saved before the stage was recorded: ZeRO, as every run was then
        ({"zero_stage": 0, "universal": True}, False, 2),  # DeepSpeed's universal loader needs ZeRO
        ({"zero_stage": 0}, False, 0),
        ({"zero_stage": 0}, True, 0),  # a stage-0 checkpoint loads only without ZeRO, whatever the knob says
    ],
)
def test_a_resume_keeps_the_stage_its_checkpoint_was_saved_with(tmp_path, marker, keep, stage):
    config = ds(2)
    single_rank_stage(config, world=1, resume_dir=checkpoint(tmp_path, **marker), keep_partitioning=keep)
    assert config["zero_optimization"]["stage"] == stage
