"""The seesaw report's arithmetic and files on hand-made scores (the tiny end-to-end run scores ~0 everywhere)."""

import json

import pytest

from cgc.report import build_report, markdown, write_report

TASKS = {"add": "numbers", "uppercase": "words", "length": "letters"}


def run(scores: dict[str, float], params: int) -> dict:
    metric = {"add": "exact_match", "uppercase": "exact_match", "length": "rouge_l"}
    evaluation = {
        "tasks": {
            t: {"cluster": c, "metric": metric[t], "score": scores[t], "exact_match": scores[t], "n": 16}
            for t, c in TASKS.items()
        }
    }
    summary = {"trainable_params": params, "final_loss": 0.5, "tokens_per_s": 100.0}
    return {"eval": evaluation, "summary": summary, "config": {"r": 8, "experts_per_layer": 15, "total_rank": 120}}


SETUP = {"command": "python recipes/compare.py --config x.yaml", "model": "m", "steps": 10, "budget_rank": 120}


def test_deltas_and_worst_drop_are_against_per_task_lora():
    runs = {
        "shared_lora": run({"add": 0.9, "uppercase": 0.2, "length": 0.5}, 1000),
        "per_task_lora": run({"add": 0.5, "uppercase": 0.8, "length": 0.5}, 900),
        "cgc_lora": run({"add": 0.75, "uppercase": 0.7, "length": 0.6}, 1001),
    }
    report = build_report(runs, {**SETUP, "examples_per_task": 16})
    shared, cgc = report["methods"]["shared_lora"], report["methods"]["cgc_lora"]
    assert shared["delta_vs_per_task_lora"] == pytest.approx({"add": 0.4, "uppercase": -0.6, "length": 0.0})
    assert shared["worst_drop"] == pytest.approx(0.6) and shared["mean"] == pytest.approx(1.6 / 3)
    assert cgc["worst_drop"] == pytest.approx(0.1) and cgc["mean"] == pytest.approx(2.05 / 3)
    assert report["methods"]["per_task_lora"]["worst_drop"] == 0.0
    assert report["tasks"] == {"add": "exact_match", "uppercase": "exact_match", "length": "rouge_l"}
    text = markdown(report)
    assert "| LoRA (shared) | 8 | 15 | 1,000 | 0.533 | 0.533 | 0.600 |" in text
    assert "| uppercase | exact_match | -0.600 | +0.000 | -0.100 |" in text


def test_without_per_task_lora_there_are_no_deltas_and_the_files_are_written(tmp_path):
    runs = {"shared_lora": run({"add": 1.0, "uppercase": 0.0, "length": 0.5}, 10)}
    report = build_report(runs, {**SETUP, "examples_per_task": 16})
    assert "worst_drop" not in report["methods"]["shared_lora"]
    write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert "worst drop" not in (tmp_path / "report.md").read_text()
    assert (tmp_path / "seesaw.png").read_bytes()[:4] == b"\x89PNG"
