"""cgc: multi-task fine-tuning of one frozen LLM with CGC-LoRA (arXiv 2402.01684)."""

from cgc import presets
from cgc.config import CGCLoraConfig
from cgc.export import export_peft_adapter, merge_task
from cgc.layer import CGCLinear, ClusterExperts
from cgc.model import CGCModel, attach, load_adapter

__all__ = [
    "CGCLoraConfig",
    "CGCLinear",
    "CGCModel",
    "ClusterExperts",
    "attach",
    "export_peft_adapter",
    "load_adapter",
    "merge_task",
    "presets",
]
__version__ = "0.1.0"
