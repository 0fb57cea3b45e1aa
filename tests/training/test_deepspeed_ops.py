"""DeepSpeed's just-in-time ops: the extensions directory in the environment, a stale build lock stops the recipe
with a message instead of a silent hang, and a build that does happen is announced."""

import os
import sys
import time
from pathlib import Path

from cgc.training import deepspeed_ops as ops


def test_the_ops_a_run_loads_depend_on_the_machine_and_the_offload_config():
    offload = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    assert ops.ops_for({"zero_optimization": {"stage": 3}}, cuda=False) == [ops.SHM_COMM]
    assert ops.ops_for(offload, cuda=False) == [ops.SHM_COMM, ops.CPU_ADAM]
    assert ops.ops_for(offload, cuda=True) == [ops.CPU_ADAM]
    assert ops.ops_for({"zero_optimization": {"stage": 2}}, cuda=True) == []


def test_only_old_locks_of_the_ops_about_to_load_count_as_stale(tmp_path):
    old = tmp_path / f"{ops.SHM_COMM}_v1" / "lock"
    fresh = tmp_path / ops.CPU_ADAM / "lock"
    other = tmp_path / "fused_adam" / "lock"
    for lock in (old, fresh, other):
        lock.parent.mkdir()
        lock.touch()
    ten_minutes_ago = time.time() - 600
    os.utime(old, (ten_minutes_ago, ten_minutes_ago))
    os.utime(other, (ten_minutes_ago, ten_minutes_ago))
    assert ops.stale_locks(tmp_path, [ops.SHM_COMM, ops.CPU_ADAM]) == [old]  # a build may hold the fresh one
    assert str(old) in ops.stale_lock_message([old])


def test_a_build_is_announced_only_when_no_built_module_exists(tmp_path, capsys):
    assert ops.announce_builds(tmp_path, [ops.SHM_COMM]) == [ops.SHM_COMM]
    assert f"building DeepSpeed op {ops.SHM_COMM} (first run only" in capsys.readouterr().err
    built = tmp_path / ops.SHM_COMM / f"{ops.SHM_COMM}.so"
    built.parent.mkdir()
    built.touch()
    assert ops.announce_builds(tmp_path, [ops.SHM_COMM]) == []
    assert capsys.readouterr().err == ""


def test_the_recipe_uses_the_environments_extensions_directory(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert ops.use_environment_extensions_dir() == Path(sys.prefix) / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/elsewhere")
    assert ops.use_environment_extensions_dir() == Path("/elsewhere")  # a user's choice is kept
