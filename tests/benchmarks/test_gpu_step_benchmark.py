"""benchmarks/gpu_step.py runs on CPU as a smoke run (the GPU figures need a GPU): one JSON object, both
variants, the FLOP count that MFU rests on, and the recipe's own steps at the same batch and length."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_gpu_step_smoke_run_on_cpu():
    command = [sys.executable, "benchmarks/gpu_step.py", "--model", "tiny-llama", "--device", "cpu"]
    command += ["--quantization", "none", "--dtype", "float32", "--batch", "2", "--seq", "16", "--repeats", "2"]
    command += ["--warmup", "1", "--recipe"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(result.stdout)
    cgc_row, peft_row = report["results"]["cgc"], report["results"]["peft_r40"]
    assert cgc_row["tokens_per_s"] > 0 and peft_row["tokens_per_s"] > 0 and report["cgc_over_peft_step_time"] > 0
    # Equal total rank: one cluster of CGC-LoRA computes with as many adapter weights as PEFT r=40 has.
    assert cgc_row["flops_per_token"] == peft_row["flops_per_token"] > 6 * report["frozen_linear_params"]
    assert cgc_row["mfu"] is None and report["peak_bf16_tflops"] is None  # no peak to divide by on a CPU
    # the recipe's steps: every example cut to exactly --seq tokens (no padding), the steps after the warmup timed
    recipe = report["recipe"]
    assert recipe["padding_fraction"] == 0 and recipe["steps_timed"] == 2
    assert recipe["step_s"] == pytest.approx(2 * 16 / recipe["tokens_per_s"])
    assert recipe["over_bare_loop"] == pytest.approx(recipe["tokens_per_s"] / cgc_row["tokens_per_s"])
    assert report["checkpointing"] is True and report["batch"] == 2 and report["seq"] == 16


def test_without_checkpointing_the_flop_count_drops_the_recompute():
    command = [sys.executable, "benchmarks/gpu_step.py", "--model", "tiny-llama", "--device", "cpu", "--repeats", "1"]
    command += ["--quantization", "none", "--dtype", "float32", "--batch", "1", "--seq", "8", "--warmup", "0"]
    result = subprocess.run([*command, "--no_checkpointing"], cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    row = report["results"]["peft_r40"]
    assert report["checkpointing"] is False
    assert row["flops_per_token"] == 4 * report["frozen_linear_params"] + 6 * row["trainable_params"]
