"""Per-task export: a standard PEFT LoRA adapter, or a plain model with ΔW_t merged into W0.

A task's delta ΔW_t = (alpha/r) Σ_k g_{t,k} B_k A_k is constant, so it is exactly one LoRA of rank
R = (S+K)·r: stack the A_k, concatenate the (alpha/r)·g_{t,k}·B_k, and set lora_alpha = R so PEFT's
scaling (lora_alpha / r) is 1.
"""

from __future__ import annotations

import copy
import filecmp
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from cgc.adapter.layer import CGCLinear
from cgc.adapter.model import CGCModel


def export_peft_adapter(model: CGCModel, task: str, out_dir: str | os.PathLike) -> str:
    """Write `adapter_config.json` + `adapter_model.safetensors` that PEFT loads as task `task`."""
    place = model.task_map.place(task)
    cfg = model.cgc_config
    rank = cfg.exported_rank
    tensors = {}
    with torch.no_grad():
        scales = model.task_scales(task)  # (L, R)
        for name, layer in model.adapted_layers().items():
            a, b = layer.task_factors(place.cluster, place.local_index, scales[layer.layer_index])
            # PEFT's key layout: base_model.model.<module path>.lora_{A,B}.weight
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().cpu().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().cpu().contiguous()
    base_config = getattr(model.base_model, "config", None)
    # imported here: peft's import takes seconds, and most processes that import cgc never export
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=rank,
        lora_alpha=rank,  # scaling = lora_alpha / r = 1: the gate and alpha/r are already folded into B
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM" if type(model.base_model).__name__.endswith("ForCausalLM") else None,
        base_model_name_or_path=getattr(base_config, "_name_or_path", None) or None,
        inference_mode=True,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as fresh:
        peft_config.save_pretrained(fresh)
        sort_target_modules(Path(fresh) / "adapter_config.json")
        # One metadata key: safetensors writes a header's metadata in hash-map order, so two keys made the same
        # tensors' file differ run to run, and an unchanged task's export must stay byte-identical.
        save_file(tensors, os.path.join(fresh, "adapter_model.safetensors"), metadata={"format": "pt"})
        for file in sorted(Path(fresh).iterdir()):
            # an unchanged file is not rewritten: a server that loaded it (e.g. a trained task of a grown adapter,
            # cgc.adapter.growth) reads the same bytes; a changed one replaces it whole (a rename)
            target = out_dir / file.name
            if not (target.is_file() and filecmp.cmp(file, target, shallow=False)):
                os.replace(file, target)
    return str(out_dir)


def sort_target_modules(config_file: Path) -> None:
    """PEFT keeps target_modules as a set and writes it in the set's order, which string hashing changes from one
    process to the next: sorted, the same export is the same bytes."""
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))  # PEFT's own layout


def merge_task(model: CGCModel, task: str) -> nn.Module:
    """A copy of the base model with task `task`'s ΔW_t folded into W0; the CGC model is left unchanged.

    Needs an unquantized base: folding into 4/8-bit packed weights would not be exact.
    """
    place = model.task_map.place(task)
    merged = copy.deepcopy(model.base_model)
    with torch.no_grad():
        scales = model.task_scales(task)  # (L, R)
        for name, layer in list(merged.named_modules()):
            if not isinstance(layer, CGCLinear):
                continue
            base = layer.base_layer
            if type(base) is not nn.Linear:
                raise ValueError(
                    f"merge_task needs an unquantized base; layer {name!r} is a {type(base).__name__}. "
                    "Reload the base in float and use cgc.load_adapter, or serve the export_peft_adapter output."
                )
            delta = layer.delta_weight(place.cluster, place.local_index, scales[layer.layer_index])  # (d_out, d_in)
            base.weight.add_(delta.to(base.weight.dtype))
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, base)
    return merged
