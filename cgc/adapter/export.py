"""Per-task export: a standard PEFT LoRA adapter, or a plain model with ΔW_t merged into W0.

A task's delta ΔW_t = (alpha/r) Σ_k g_{t,k} B_k A_k is constant, so it is exactly one LoRA of rank
R = (S+K)·r: stack the A_k, concatenate the (alpha/r)·g_{t,k}·B_k, and set lora_alpha = R so PEFT's
scaling (lora_alpha / r) is 1.
"""

from __future__ import annotations

import copy
import os

import torch
from peft import LoraConfig
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
            a, b = layer.experts[place.cluster].task_factors(place.local_index, scales[layer.layer_index])
            # PEFT's key layout: base_model.model.<module path>.lora_{A,B}.weight
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().cpu().contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().cpu().contiguous()
    base_config = getattr(model.base_model, "config", None)
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
    os.makedirs(out_dir, exist_ok=True)
    peft_config.save_pretrained(out_dir)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt", "cgc_task": task})
    return str(out_dir)


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
