"""A run written before cgc was split into subpackages (tests/fixtures/run_before_package_move, see its README)
still loads: its adapter loads and exports exactly the PEFT adapter it exported then, and its checkpoint resumes."""

import json
import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file

import cgc
from cgc.models import load_recipe_model
from tests.conftest import ROOT

OLD_RUN = ROOT / "tests" / "fixtures" / "run_before_package_move"


def test_the_old_adapter_loads_and_exports_what_it_exported_then(tmp_path):
    base, _ = load_recipe_model("tiny-llama", None, "none", "float32", seed=0)
    model = cgc.load_adapter(base, OLD_RUN / "adapters" / "cgc")
    saved = load_file(OLD_RUN / "adapters" / "cgc" / "adapter_model.safetensors")
    loaded = dict(model.trainable_parameters())
    assert sorted(saved) == sorted(loaded) and any(t.abs().sum() > 0 for n, t in saved.items() if "lora_B" in n)
    assert all(torch.equal(saved[name], loaded[name].detach()) for name in saved)
    cgc.export_peft_adapter(model, "add", tmp_path / "add")
    then, now = (load_export(d) for d in (OLD_RUN / "adapters" / "peft" / "add", tmp_path / "add"))
    assert sorted(then["tensors"]) == sorted(now["tensors"])
    assert all(torch.equal(then["tensors"][k], now["tensors"][k]) for k in then["tensors"])
    assert then["config"] == now["config"]


def load_export(directory) -> dict:
    """A PEFT export's tensors and config; the config without what differs by the base's loading (the old run's
    base was a temporary NF4 directory), target modules as a set (PEFT writes a set, in no fixed order)."""
    config = json.loads((directory / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path")
    config["target_modules"] = sorted(config["target_modules"])
    return {"tensors": load_file(directory / "adapter_model.safetensors"), "config": config}


def test_the_old_checkpoint_resumes_under_the_scaling_it_was_trained_with(tmp_path):
    """The old run was trained with the weighting of versions before 0.2 (`cgc.scaling: lora`): resuming it under
    today's default would change what its experts compute, and is refused, naming the key."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    command = [sys.executable, "recipes/finetune.py", "--config", str(run / "config.yaml"), f"output_dir={run}"]
    command += ["resume=latest", "train.max_steps=3", "eval.max_examples_per_task=0"]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and 'cgc.scaling: "lora" -> "rslora"' in refused.stderr, refused.stderr[-2000:]
    result = subprocess.run([*command, "cgc.scaling=lora"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_2'} at step 2" in result.stdout
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # the old run's two steps kept, the third trained now
    assert json.loads((run / "run_summary.json").read_text())["steps"] == 3
    assert (run / "checkpoints" / "step_3" / "cgc_complete.json").is_file()
