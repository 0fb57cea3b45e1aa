"""A run written before cgc was split into subpackages (tests/fixtures/run_before_package_move, see its README)
still loads: its adapter loads and exports exactly the PEFT adapter it exported then, and its checkpoint resumes."""

import shutil
import subprocess
import sys

import torch
from peft import LoraConfig
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
    experts = [n for n in saved if not n.endswith("gate_logits")]  # the experts keep their names
    assert experts and all(torch.equal(saved[n], loaded[n].detach()) for n in experts)
    assert any(saved[n].abs().sum() > 0 for n in experts if n.endswith("lora_B"))
    # the old adapter kept one gate per layer (<layer>.experts.<cluster>.gate_logits); today each cluster's are
    # one tensor, a row per layer in the model's layer order
    for index, layer in enumerate(model.adapted_layers()):
        for cluster in model.task_map.clusters:
            old = saved[f"{layer}.experts.{cluster}.gate_logits"]
            assert torch.equal(loaded[f"gates.{cluster}.gate_logits"][index].detach(), old)
    cgc.export_peft_adapter(model, "add", tmp_path / "add")
    then, now = (load_export(d) for d in (OLD_RUN / "adapters" / "peft" / "add", tmp_path / "add"))
    assert sorted(then["tensors"]) == sorted(now["tensors"])
    assert all(torch.equal(then["tensors"][k], now["tensors"][k]) for k in then["tensors"])
    assert then["config"] == now["config"]


def load_export(directory) -> dict:
    """A PEFT export's tensors and config, the config as the installed PEFT reads it (a newer PEFT adds fields at
    their defaults and writes its own version: the same adapter), without what differs by the base's loading (the
    old run's base was a temporary NF4 directory), target modules as a set (PEFT writes a set, in no fixed order)."""
    config = LoraConfig.from_pretrained(directory).to_dict()
    for key in ("base_model_name_or_path", "peft_version"):
        config.pop(key, None)
    config["target_modules"] = sorted(config["target_modules"])
    return {"tensors": load_file(directory / "adapter_model.safetensors"), "config": config}


def test_the_old_checkpoint_is_refused_with_what_to_do_instead(tmp_path):
    """The old run keeps a gate in every layer and was trained with the weighting of versions before 0.2: its
    checkpoint's module and optimizer states do not fit today's model (one gate tensor per cluster), so resuming
    it is refused before any model loads, naming both and the way on; its adapter still loads (above)."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUN, run)
    command = [sys.executable, "recipes/finetune.py", "--config", str(run / "config.yaml"), f"output_dir={run}"]
    command += ["data.allow_eval_overlap=true"]  # its demo eval data shares the letters tasks' inputs (a newer check)
    command += ["resume=latest", "train.max_steps=3", "eval.max_examples_per_task=0", "cgc.scaling=lora"]
    refused = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert 'adapter.gate_layout: "per_layer" -> "stacked"' in refused.stderr
    assert "keeps a gate in every layer" in refused.stderr and "adapters/cgc" in refused.stderr
    without = subprocess.run(command[:-1], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert without.returncode == 2 and 'cgc.scaling: "lora" -> "rslora"' in without.stderr
    assert not (run / "checkpoints" / "step_3").exists()  # nothing trained
