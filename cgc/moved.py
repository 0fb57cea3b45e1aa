"""Module paths of cgc before it was split into subpackages, still importable.

`import cgc.tokenization` (or `from cgc.sampler import ClusterAwareBatchSampler`) keeps working: the old name is
an alias of the module where the code lives now (the same module object, so a monkeypatch through either name
is seen through both), with a DeprecationWarning that names the new path. Saved adapters and checkpoints hold no
module paths of cgc and load unchanged (tests/recipes/test_old_run_loads.py). The old `python -m cgc.<module>`
commands are `python -m cgc <command>` now (cgc/cli.py); an old one stops with a message naming the new one.

Names that left their module in the move: `cgc.distributed.error_exit` is `cgc.recipe.error_exit` (a recipe's
exit, which library code does not call), `cgc.serving.run_adapter` is `cgc.training.run_dir.find_run_adapter`
(kept as an alias), `cgc.clustering.main` is `python -m cgc cluster`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# `python -m <old>` -> the command that replaced it
COMMANDS = {
    "cgc.checkpoint": "python -m cgc to-universal CHECKPOINT",
    "cgc.clustering": "python -m cgc cluster --model ... --data ...",
    "cgc.recipe_config": "python -m cgc keys",
    "cgc.deepspeed_ops": "python -m cgc build-ops",
}
# old path -> where it lives now
MOVED = {
    "cgc.config": "cgc.adapter.config",
    "cgc.task_map": "cgc.adapter.task_map",
    "cgc.routing": "cgc.adapter.routing",
    "cgc.layer": "cgc.adapter.layer",
    "cgc.model": "cgc.adapter.model",
    "cgc.export": "cgc.adapter.export",
    "cgc.presets": "cgc.adapter.presets",
    "cgc.tokenization": "cgc.data.tokenization",
    "cgc.sampler": "cgc.data.sampler",
    "cgc.validation_split": "cgc.data.validation_split",
    "cgc.base_model": "cgc.models.base_model",
    "cgc.tiny": "cgc.models.tiny",
    "cgc.distributed": "cgc.training.distributed",
    "cgc.checkpoint": "cgc.training.checkpoint",
    "cgc.run_log": "cgc.training.run_log",
    "cgc.run_identity": "cgc.training.run_identity",
    "cgc.target_loss": "cgc.training.target_loss",
    "cgc.deepspeed_ops": "cgc.training.deepspeed_ops",
    "cgc.recipe_config": "cgc.recipe.config",
    "cgc.recipe_inputs": "cgc.recipe.inputs",
    "cgc.support": "cgc.recipe.compatibility",
    "cgc.generation": "cgc.evaluation.generation",
    "cgc.metrics": "cgc.evaluation.metrics",
    "cgc.clustering": "cgc.analysis.clustering",
    "cgc.report": "cgc.analysis.report",
    "cgc.gate_report": "cgc.analysis.gate_report",
    "cgc.stats": "cgc.analysis.stats",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new path (asked only after the normal finders failed)."""

    def __init__(self):
        self._real_specs = {}  # alias name -> the real module's spec, between create_module and exec_module

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system has just set the alias's spec on the real module: give it its own back. Keyed by the
        # alias (imports of one name hold one lock), so another thread importing another alias cannot mix them up.
        module.__spec__ = self._real_specs.pop(module.__spec__.name)

    def get_code(self, fullname):
        """`python -m <old path>` (runpy asks for the code to run): a clear stop naming the command today."""
        if fullname in COMMANDS:
            message = f"`python -m {fullname}` is `{COMMANDS[fullname]}` now"
        else:
            message = f"{fullname} (now {MOVED[fullname]}) is not a command: see `python -m cgc --help`"
        return compile(f"raise SystemExit({message!r})", fullname, "exec")


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
