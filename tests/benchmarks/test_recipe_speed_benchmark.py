"""benchmarks/recipe_speed.py end to end on the tiny config: one JSON object with the three variants' tokens/s
(real and padded), the recipe's phase breakdown, and the long-tailed data variant."""

import json
import subprocess
import sys

from cgc.training.run_log import PhaseTimes
from tests.conftest import ROOT


def test_recipe_speed_reports_every_variant_and_where_the_recipe_spends_its_time():
    command = [sys.executable, "benchmarks/recipe_speed.py", "--config", "recipes/configs/tiny_cpu.yaml"]
    command += ["--steps", "3", "--rounds", "1", "--batch", "8", "--long-tail"]
    command += ["--variants", "peft_loop,recipe_world1,recipe_world1_ungrouped,recipe_world2"]
    command += ["model.quantization=none", "deepspeed.config=ds_configs/zero2.json"]  # the loop has no NF4 base
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    variants = {"peft_loop", "recipe_world1", "recipe_world1_ungrouped", "recipe_world2"}
    assert set(report["tokens_per_s"]) == variants and all(v > 0 for v in report["tokens_per_s"].values())
    for variant in variants:
        real, padded = report["tokens_per_s"][variant], report["padded_tokens_per_s"][variant]
        assert padded >= real and 0 <= report["padding_fraction"][variant] < 1
    assert any(a.startswith("data.train_files=[") and "long_tail" in a for a in report["overrides"])
    for variant in variants - {"peft_loop"}:
        phases = report["phase_seconds"][variant]
        assert set(phases) == set(PhaseTimes.PHASES) and phases["forward"] > 0 and phases["backward"] > 0
    assert report["recipe_world1_over_peft_loop"] > 0 and report["recipe_world2_over_world1"] > 0
