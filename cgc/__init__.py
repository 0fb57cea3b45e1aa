"""cgc: multi-task fine-tuning of one frozen LLM with CGC-LoRA (arXiv 2402.01684).

The package map (README "How it is built" is generated from it: `python -m cgc map`): `cgc.adapter` is the method
and imports nothing else of cgc; `cgc.data`, `cgc.models` feed it; `cgc.training`, `cgc.evaluation`,
`cgc.analysis` and `cgc.serving` run it; `cgc.recipe` is the recipes' config layer, which no library module imports.
"""

from cgc import moved
from cgc.adapter import presets
from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.errors import CGCError
from cgc.adapter.export import export_peft_adapter, merge_task
from cgc.adapter.layer import CGCLinear, ClusterExperts
from cgc.adapter.model import CGCModel, attach, load_adapter

moved.install()  # the module paths of cgc before its subpackages (cgc.tokenization, ...) still import

__all__ = [
    "CGCError",
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
