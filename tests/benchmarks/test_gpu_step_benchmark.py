"""benchmarks/gpu_step.py runs on CPU as a smoke run (the GPU figures need a GPU): one JSON object, both
variants, and the FLOP count that MFU rests on."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_gpu_step_smoke_run_on_cpu():
    command = [sys.executable, "benchmarks/gpu_step.py", "--model", "tiny-llama", "--device", "cpu"]
    command += ["--quantization", "none", "--dtype", "float32", "--batch", "2", "--seq", "16", "--repeats", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(result.stdout)
    cgc_row, peft_row = report["results"]["cgc"], report["results"]["peft_r40"]
    assert cgc_row["tokens_per_s"] > 0 and peft_row["tokens_per_s"] > 0 and report["cgc_over_peft_step_time"] > 0
    # Equal total rank: one cluster of CGC-LoRA computes with as many adapter weights as PEFT r=40 has.
    assert cgc_row["flops_per_token"] == peft_row["flops_per_token"] > 6 * report["frozen_linear_params"]
    assert cgc_row["mfu"] is None and report["peak_bf16_tflops"] is None  # no peak to divide by on a CPU
