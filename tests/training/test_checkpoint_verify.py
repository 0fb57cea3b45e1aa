"""Verified checkpoints and adapters: a resume checks every file against the marker's sizes and CRC-32s before
loading any; `resume=latest` skips a damaged checkpoint naming the file, an explicit one refuses; evaluate and
export refuse a damaged adapter naming the file. Each check fails with the verification removed."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from cgc.training import checkpoint as ckpt
from cgc.training.checkpoint_marker import COMPLETE_MARKER, damage, mark_complete
from tests.conftest import ROOT


def fake_checkpoint(checkpoints: Path, step: int) -> Path:
    tag = checkpoints / f"step_{step}"
    (tag / "zero").mkdir(parents=True)
    (tag / "zero" / "optimizer_state.pt").write_bytes(os.urandom(4096))
    (tag / "cgc_rank0.pt").write_bytes(os.urandom(512))
    mark_complete(tag, step, world_size=1, zero_stage=0)
    return tag


def latest(checkpoints: Path) -> tuple[Path | None, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = ckpt.resolve_resume("latest", checkpoints)
    return chosen, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("damage_it", "said"),
    [
        (lambda t: (t / "zero" / "optimizer_state.pt").write_bytes(b""), "optimizer_state.pt has 0 bytes, 4096"),
        (lambda t: (t / "cgc_rank0.pt").write_bytes(os.urandom(512)), "cgc_rank0.pt changed since it was saved"),
        (lambda t: (t / "cgc_rank0.pt").unlink(), "cgc_rank0.pt is missing"),
        (lambda t: (t / COMPLETE_MARKER).write_text(""), f"{COMPLETE_MARKER} is damaged"),
    ],
)
def test_a_damaged_checkpoint_is_skipped_by_latest_and_refused_by_name(tmp_path, damage_it, said):
    older, newer = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    assert latest(tmp_path) == (newer, [])
    damage_it(newer)
    chosen, said_so = latest(tmp_path)
    assert chosen == older and len(said_so) == 1 and said in said_so[0] and str(newer) in said_so[0]
    with pytest.raises(ValueError, match="the checkpoint is damaged"):
        ckpt.resolve_resume(str(newer), tmp_path)
    assert damage(older) is None


def test_a_marker_without_a_manifest_is_trusted_as_before(tmp_path):
    tag = fake_checkpoint(tmp_path, 2)
    marker = json.loads((tag / COMPLETE_MARKER).read_text())
    (tag / COMPLETE_MARKER).write_text(json.dumps({k: v for k, v in marker.items() if k != "files"}))
    (tag / "cgc_rank0.pt").write_bytes(b"")  # a version before the manifest could not have said
    assert damage(tag) is None and latest(tmp_path) == (tag, [])


def run(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_the_recipe_resumes_from_the_last_whole_checkpoint_and_tools_refuse_a_damaged_adapter(tmp_path):
    out = tmp_path / "run"
    recipe = ["recipes/finetune.py", "--config", "recipes/configs/tiny_cpu.yaml", f"output_dir={out}"]
    quick = ["model.quantization=none", "deepspeed.config=ds_configs/zero2.json", "train.save_every=2"]
    first = run(*recipe, *quick, "train.max_steps=4", "eval.max_examples_per_task=0")
    assert first.returncode == 0, first.stderr[-3000:]
    state = out / "checkpoints" / "step_4" / "cgc_rank0.pt"
    state.write_bytes(b"")  # the EOFError of before: now found before anything loads
    explicit = run(*recipe, *quick, "train.max_steps=6", f"resume={state.parent}")
    assert explicit.returncode == 2 and f"{state} has 0 bytes" in explicit.stderr, explicit.stderr[-3000:]
    assert "Traceback" not in explicit.stderr
    resumed = run(*recipe, *quick, "train.max_steps=6", "resume=latest", "eval.max_examples_per_task=0")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipping damaged checkpoint {state.parent}" in resumed.stderr
    assert f"resumed from {out / 'checkpoints' / 'step_2'} at step 2" in resumed.stdout
    weights = out / "adapters" / "cgc" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for tool in ("recipes/evaluate.py", "recipes/export.py"):
        refused = run(tool, "--config", "recipes/configs/tiny_cpu.yaml", f"output_dir={out}")
        assert refused.returncode == 2 and f"{weights} is damaged" in refused.stderr, (tool, refused.stderr[-2000:])
        assert "Traceback" not in refused.stderr
