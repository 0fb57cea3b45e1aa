"""The CGC-LoRA adapter: what a user attaches to a frozen model, trains, saves and exports.

`config` (CGCLoraConfig, validated) · `task_map` (task <-> id, task -> cluster) · `routing` (task ids to the
layers) · `gates` (every layer's task gates, once per forward) · `layer` (CGCLinear, one ClusterExperts per
cluster) · `model` (attach, CGCModel, save/load) · `export` (exact PEFT LoRA per task, merge) · `growth` (new tasks
added to a trained adapter, the trained ones untouched) · `presets` (the
baselines and controls as configurations, the budgets) · `errors` (CGCError and its subclasses). It imports nothing
else of cgc: everything else builds on it.
"""

from cgc.adapter import presets
from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.errors import AdapterConfigError, CGCError, UnknownTaskError
from cgc.adapter.export import export_peft_adapter, merge_task
from cgc.adapter.growth import attach_grown, grow
from cgc.adapter.layer import CGCLinear, ClusterExperts
from cgc.adapter.model import CGCModel, attach, load_adapter
from cgc.adapter.task_map import TaskMap

__all__ = [
    "AdapterConfigError",
    "CGCError",
    "CGCLinear",
    "CGCLoraConfig",
    "CGCModel",
    "ClusterExperts",
    "TaskMap",
    "UnknownTaskError",
    "attach",
    "attach_grown",
    "export_peft_adapter",
    "grow",
    "load_adapter",
    "merge_task",
    "presets",
]
