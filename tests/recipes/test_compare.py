"""recipes/compare.py (the seesaw report), recipes/evaluate.py and recipes/export.py end to end on the tiny config."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

import cgc
from cgc.adapter.presets import BASELINES, CLUSTER_MAPS, CONTROLS, LABELS
from cgc.analysis.report import lrs_within_noise
from cgc.analysis.stats import paired_bootstrap
from cgc.data.sampler import LAW as SAMPLER_LAW
from cgc.evaluation import task_metrics
from cgc.evaluation.metrics import example_scores
from cgc.models.tiny import char_tokenizer, tiny_model
from cgc.recipe import load_recipe_config
from tests.conftest import ROOT

TINY = "recipes/configs/tiny_cpu.yaml"
# Few steps, 2 examples per task, a float base on one process: the report's plumbing, not its numbers.
FAST = [
    "train.max_steps=4",
    "train.save_every=2",
    "eval.max_examples_per_task=2",
    "model.quantization=none",
    "deepspeed.config=ds_configs/zero2.json",
]
# compare.py's own knobs at their smallest: 2 seeds, a 2-lr grid of 2-step runs, 2 validation examples a task.
COMPARE = ["--seeds", "2", "--lr_grid", "3e-3,1e-2", "--grid_steps", "2", "--validation_per_task", "2"]
COMPARE += ["--eval_examples", "2", "--match", "trainable", "--methods", ",".join(BASELINES)]


def run(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # The first call is cut short in the first final run (stop_after: checkpoint at step 2, then exit), as an
    # interruption would; the second call, the same command, resumes that run and does the rest.
    first = run("recipes/compare.py", "--config", TINY, "--out", out, *COMPARE, *FAST, "train.stop_after=2")
    second = run("recipes/compare.py", "--config", TINY, "--out", out, *COMPARE, *FAST)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    return out, first, second


def test_compare_writes_every_file_with_four_methods_two_seeds_and_a_tuned_lr(compared):
    out, _, second = compared
    report = json.loads((out / "report.json").read_text())
    methods = report["budgets"]["trainable"]["methods"]
    assert list(methods) == list(BASELINES)  # shared LoRA, per-task LoRA, MOELoRA, CGC-LoRA
    budget = report["setup"]["budget_rank"]
    assert budget == 4 * 15  # the tiny config's CGC: r=4, 3 clusters x (2 shared + 3 tasks x 1)
    tasks = list(report["tasks"])
    assert len(tasks) == 9 and report["tasks"]["sort_words"] == "rouge_l"
    validation = [json.loads(line) for line in (out / "data" / "validation.jsonl").read_text().splitlines()]
    assert len(validation) == 2 * 9
    cfg = load_recipe_config(TINY, [])
    metrics = task_metrics(cfg.cgc.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    for name, row in methods.items():
        # The grid: one 2-step run per lr, scored on the validation split only; the best score's lr is the choice.
        for lr in ("0.003", "0.01"):
            grid_run = out / "grid" / name / f"lr_{lr}"
            assert json.loads((grid_run / "run_summary.json").read_text())["steps"] == 2
            predictions = [json.loads(line) for line in (grid_run / "eval_predictions.jsonl").read_text().splitlines()]
            assert sorted((p["task"], p["input"]) for p in predictions) == sorted(
                (v["task"], v["input"]) for v in validation
            )
            assert row["grid"][lr] == json.loads((grid_run / "eval.json").read_text())["mean"]
            # A finished grid run keeps its numbers, not its checkpoints nor its adapters (the disk's sake).
            assert not (grid_run / "checkpoints").exists() and not (grid_run / "adapters").exists()
        assert row["lr"] == float(max(row["grid"], key=row["grid"].get))
        # The lrs validation cannot tell from the choice, from the grid runs' own answers, marked in report.md.
        runs = {lr: [out / "grid" / name / f"lr_{lr}"] for lr in row["grid"]}
        assert row["grid_ties"] == lrs_within_noise(runs, f"{row['lr']:g}", metrics)
        assert set(row["grid_ties"]) <= set(row["grid"]) - {f"{row['lr']:g}"}
        ties_in_md = "≈" in (out / "report.md").read_text()
        any_ties = any(r["grid_ties"] for r in methods.values())
        assert ties_in_md == any_ties
        seed_scores = []
        for seed in (0, 1):
            summary = json.loads((out / name / f"seed_{seed}" / "run_summary.json").read_text())
            evaluation = json.loads((out / name / f"seed_{seed}" / "eval.json").read_text())
            config = yaml.safe_load((out / name / f"seed_{seed}" / "config.yaml").read_text())
            assert summary["finished"] and summary["steps"] == 4
            assert not (out / name / f"seed_{seed}" / "checkpoints").exists()  # finished: never resumed
            assert (out / name / f"seed_{seed}" / "adapters" / "cgc" / "adapter_model.safetensors").is_file()
            assert config["seed"] == seed and config["train"]["lr"] == row["lr"]
            assert row["trainable_params"] == summary["trainable_params"] > 0
            seed_scores.append(evaluation["mean"])
        assert row["seed_means"] == pytest.approx(seed_scores)
        assert row["mean"] == pytest.approx(np.mean(seed_scores)) and row["mean_std"] == pytest.approx(
            np.std(seed_scores, ddof=1)
        )
        assert budget - row["experts_per_layer"] < row["total_rank"] <= budget  # matched as integer ranks allow
        assert row["r"] >= 4  # no degenerate experts
        reference = methods["per_task_lora"]["scores"]
        assert row["delta_vs_per_task_lora"] == pytest.approx({t: row["scores"][t] - reference[t] for t in tasks})
        assert row["worst_drop"] == pytest.approx(max(0.0, -min(row["delta_vs_per_task_lora"].values())))
        assert f"{row['trainable_params']:,}" in second.stdout  # the parameter counts are printed before training
    comparison = report["budgets"]["trainable"]["comparison"]
    assert comparison["baseline"] in LABELS and comparison["baseline"] != "cgc_lora"
    assert comparison["low"] <= comparison["difference"] <= comparison["high"]
    # The gates: 9 tasks x 2 blocks of the tiny model, shares in [0, 1].
    shares = report["gates"]["cgc_lora"]["own_share"]
    assert set(shares) == set(tasks) and all(len(s) == 2 and all(0 <= v <= 1 for v in s) for s in shares.values())
    markdown = (out / "report.md").read_text()
    for name in BASELINES:
        assert f"| {LABELS[name]} |" in markdown
    for text in ("worst drop vs per-task LoRA", "seesaw.png", "gates.png", "Gates: on average", "95 % interval"):
        assert text in markdown
    assert "task hidden from the input (only task-id methods can know it)" in markdown  # the demo's hidden variant
    for image in ("seesaw.png", "gates.png", "budgets.png"):
        png = (out / image).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_more_grid_seeds_keep_the_first_seeds_runs_and_choose_on_their_mean(tmp_path):
    """--grid_seeds 2 after a one-seed grid: its runs are kept, each lr gains a seed-1 run, the choice is the best
    mean over the two seeds, and the ties pair both seeds' answers."""
    args = [arg if arg != ",".join(BASELINES) else "shared_lora" for arg in COMPARE] + ["--out", tmp_path]
    first = run("recipes/compare.py", "--config", TINY, *args, *FAST, "--seeds", "1")
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    shutil.rmtree(tmp_path / "shared_lora")  # the final run, at the one-seed choice (a rerun refuses another lr's)
    more = run("recipes/compare.py", "--config", TINY, *args, *FAST, "--seeds", "1", "--grid_seeds", "2")
    assert more.returncode == 0, (more.stdout + more.stderr)[-4000:]
    assert more.stdout.count("done earlier, kept") == 2 and more.stdout.count("steps, lr") == 2 + 1  # 2 grid, 1 final
    row = json.loads((tmp_path / "report.json").read_text())["budgets"]["trainable"]["methods"]["shared_lora"]
    runs = {
        lr: [tmp_path / "grid" / "shared_lora" / f"lr_{lr}{tail}" for tail in ("", "_seed_1")] for lr in row["grid"]
    }
    seeds_differ = False
    for lr, (seed_0, seed_1) in runs.items():
        assert [yaml.safe_load((r / "config.yaml").read_text())["seed"] for r in (seed_0, seed_1)] == [0, 1]
        means = [json.loads((r / "eval.json").read_text())["mean"] for r in (seed_0, seed_1)]
        assert row["grid"][lr] == pytest.approx(np.mean(means))
        seeds_differ |= means[0] != means[1]
    assert seeds_differ  # else the mean could not be told from either seed's score
    assert row["lr"] == float(max(row["grid"], key=row["grid"].get))
    cfg = load_recipe_config(TINY, [])
    metrics = task_metrics(cfg.cgc.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    assert row["grid_ties"] == lrs_within_noise(runs, f"{row['lr']:g}", metrics)
    assert "runs (seeds 0, 1: their mean)" in (tmp_path / "report.md").read_text()


def test_eval_examples_that_are_training_examples_are_left_out_of_the_held_out_mean_and_interval(compared):
    """The demo's letters tasks draw their inputs from one 39-word list, so their eval examples are training
    examples (data.allow_eval_overlap): the report counts them and gives each mean and the interval without them
    too, recomputed here from the runs' own answers."""
    out, _, _ = compared
    report = json.loads((out / "report.json").read_text())
    trained = {
        (r["task"], r["input"]) for r in map(json.loads, (out / "data" / "train.jsonl").read_text().splitlines())
    }
    cfg = load_recipe_config(TINY, [])
    metrics = task_metrics(cfg.cgc.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    answers = [json.loads(line) for line in (out / "cgc_lora" / "seed_0" / "eval_predictions.jsonl").open()]
    overlap = {}
    for row in answers:
        if (row["task"], row["input"]) in trained:
            overlap[row["task"]] = overlap.get(row["task"], 0) + 1
    assert set(overlap) >= {"first_letter", "last_letter", "length"} and len(overlap) < 9  # some tasks held out
    assert report["setup"]["eval_in_training"] == overlap

    def held_out_scores(name: str) -> dict[str, np.ndarray]:  # task -> (seeds, held-out examples)
        per_seed = []
        for seed in (0, 1):
            rows = [json.loads(line) for line in (out / name / f"seed_{seed}" / "eval_predictions.jsonl").open()]
            kept = [r for r in rows if (r["task"], r["input"]) not in trained]
            per_seed.append({t: [r for r in kept if r["task"] == t] for t in dict.fromkeys(r["task"] for r in kept)})
        return {
            t: np.array([example_scores(metrics[t], [r["prediction"] for r in s[t]], [r["target"] for r in s[t]])
                         for s in per_seed])
            for t in per_seed[0]
        }  # fmt: skip

    budget = report["budgets"]["trainable"]
    for name, row in budget["methods"].items():
        scores = held_out_scores(name)
        seed_means = [np.mean([s[i].mean() for s in scores.values()]) for i in (0, 1)]
        assert row["held_out_mean"] == pytest.approx(np.mean(seed_means))
        assert row["held_out_mean_std"] == pytest.approx(np.std(seed_means, ddof=1))
    held = budget["comparison_held_out"]
    expected = paired_bootstrap(held_out_scores("cgc_lora"), held_out_scores(budget["comparison"]["baseline"]))
    assert held == budget["comparison"] | expected
    markdown = (out / "report.md").read_text()
    assert "have a training example's (task, input)" in markdown and "Held-out eval examples only:" in markdown


def test_an_interrupted_compare_resumes_and_a_finished_one_is_kept(compared):
    out, first, second = compared
    assert first.returncode != 0 and "Run the same command again to resume it" in first.stderr
    assert "resumed from" in second.stdout and "step 2" in second.stdout
    metrics = (out / "shared_lora" / "seed_0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [1, 2, 3, 4]
    report = (out / "report.json").read_text()
    start = time.time()
    # The same grid spelled another way (a repeated lr counts once): every run is kept.
    same = [arg if arg != "3e-3,1e-2" else "0.003,3e-3,1e-2" for arg in COMPARE]
    third = run("recipes/compare.py", "--config", TINY, "--out", out, *same, *FAST)
    assert third.returncode == 0, third.stderr[-2000:]
    assert third.stdout.count("done earlier, kept") == 4 * (2 + 2) and "steps, lr" not in third.stdout
    assert time.time() - start < 60
    assert json.loads((out / "report.json").read_text())["budgets"] == json.loads(report)["budgets"]


def test_a_rerun_with_other_settings_is_refused_instead_of_mixing_runs(compared):
    out, _, _ = compared
    before = (out / "report.json").read_text()
    result = run("recipes/compare.py", "--config", TINY, "--out", out, *COMPARE, "--grid_steps", "3", *FAST)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (
        "grid/shared_lora/lr_0.003 was made with other settings (train.max_steps, train.warmup_steps differ)"
        in result.stderr
    )
    other_split = [*COMPARE, "--validation_per_task", "3"]
    result = run("recipes/compare.py", "--config", TINY, "--out", out, *other_split, *FAST)
    assert result.returncode == 2 and "holds a split made with other data settings" in result.stderr
    assert len((out / "data" / "validation.jsonl").read_text().splitlines()) == 2 * 9  # left as it was
    # Other lrs for two methods (as a choice that moved with more --grid_seeds): every final run made at the old
    # lr is named in one message, before any run trains.
    moved = run(
        "recipes/compare.py", "--config", TINY, "--out", out, *COMPARE, "--lrs", "shared_lora=5e-3,moelora=5e-3", *FAST
    )
    assert moved.returncode == 2 and "steps, lr" not in moved.stdout, moved.stderr[-2000:]
    for name in ("shared_lora", "moelora"):
        for seed in (0, 1):
            assert f"{name}/seed_{seed} was made with other settings (train.lr differ)" in moved.stderr
    # A run an earlier sampler trained (its examples per task follow another law) is never averaged in.
    summary_file = out / "grid" / "shared_lora" / "lr_0.003" / "run_summary.json"
    summary = json.loads(summary_file.read_text())
    assert summary["sampler_law"] == SAMPLER_LAW
    summary_file.write_text(json.dumps({k: v for k, v in summary.items() if k != "sampler_law"}))
    try:
        older = run("recipes/compare.py", "--config", TINY, "--out", out, *COMPARE, *FAST)
    finally:
        summary_file.write_text(json.dumps(summary))
    assert older.returncode == 2 and "lr_0.003 was trained by an earlier version of the sampler" in older.stderr
    assert (out / "report.json").read_text() == before


def test_evaluate_recipe_reproduces_the_eval_phase_of_finetune(compared, tmp_path):
    out, _, _ = compared
    run_dir = out / "cgc_lora" / "seed_0"
    result = run(
        "recipes/evaluate.py", "--config", TINY, "--adapter", run_dir / "adapters/cgc", "--out", tmp_path, *FAST
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval.json").read_text()) == json.loads((run_dir / "eval.json").read_text())
    assert (tmp_path / "eval_predictions.jsonl").read_text() == (run_dir / "eval_predictions.jsonl").read_text()
    assert (tmp_path / "eval.md").read_text().startswith("| task | cluster | metric | score |")


def test_evaluate_and_export_refuse_a_missing_adapter_in_one_line(tmp_path):
    for script in ("recipes/evaluate.py", "recipes/export.py"):
        result = run(script, "--config", TINY, "--adapter", tmp_path / "nothing")
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"no cgc adapter at {tmp_path / 'nothing'}" in result.stderr


@torch.no_grad()
def test_exported_adapters_serve_mixed_batches_with_peft_and_merged_models_match(compared, tmp_path):
    out, _, _ = compared
    adapter = out / "cgc_lora" / "seed_0" / "adapters" / "cgc"
    result = run(
        "recipes/export.py",
        "--config",
        TINY,
        "--adapter",
        adapter,
        "--out",
        tmp_path,
        "--merge",
        "--tasks",
        "add,uppercase",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["add", "uppercase"]
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == ["add", "uppercase"]
    assert json.loads((tmp_path / "export.json").read_text())["lora_rank"] == 12

    model = cgc.load_adapter(tiny_model("tiny-llama", seed=0), adapter).eval()  # the config's seed-0 base
    trained = [p for n, p in model.trainable_parameters() if n.endswith("lora_B")]
    assert any(p.abs().sum() > 0 for p in trained)  # 4 steps moved B off zero: the comparison below means something
    tokenizer = char_tokenizer()
    batch = tokenizer(["12 30", "cat dog", "7 5"], return_tensors="pt", padding=True)
    tasks = ["add", "uppercase", "add"]
    expected = model(**batch, task_ids=tasks).logits

    served = PeftModel.from_pretrained(tiny_model("tiny-llama", seed=0), tmp_path / "peft" / "add", adapter_name="add")
    served.load_adapter(tmp_path / "peft" / "uppercase", adapter_name="uppercase")
    served.eval()
    torch.testing.assert_close(served(**batch, adapter_names=tasks).logits, expected, atol=1e-5, rtol=1e-4)

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "add").eval()
    add_rows = [0, 2]
    torch.testing.assert_close(merged(**batch).logits[add_rows], expected[add_rows], atol=1e-5, rtol=1e-4)


def test_evaluate_the_base_model_alone(tmp_path):
    result = run("recipes/evaluate.py", "--config", TINY, "--adapter", "none", "--out", tmp_path, *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluating the base model tiny-llama alone" in result.stdout
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert len(scores["tasks"]) == 9 and all(r["n"] == 2 for r in scores["tasks"].values())


def test_the_served_budget_and_the_controls_run_end_to_end_and_share_what_is_the_same(tmp_path):
    """--match served with every method (one seed, one lr); then the trainable budget in the same --out: the runs
    whose configuration is the same under both budgets (CGC-LoRA and its uniform-gate control) are not run again."""
    one = ["--seeds", "1", "--lr_grid", "1e-2", "--eval_examples", "2", *FAST]
    served = run("recipes/compare.py", "--config", TINY, "--out", tmp_path, "--match", "served", *one)
    assert served.returncode == 0, (served.stdout + served.stderr)[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    methods = report["budgets"]["served"]["methods"]
    assert list(methods) == list(LABELS)  # the baselines and every control
    ours = methods["cgc_lora"]["served_rank"]
    assert ours == report["setup"]["served_rank"] == 3 * 4  # the tiny config's (S + K) * r
    for name in ("shared_lora", "per_task_lora", "moelora", "cgc_no_gate", "cgc_one_cluster", "cgc_task_clusters"):
        assert methods[name]["served_rank"] == ours, name
    assert methods["moelora_per_cluster"]["served_rank"] == 5 * (ours // 5)  # as near as integer ranks allow
    for name in CONTROLS:  # one lr in the grid: those with another cluster map take it without borrowing
        borrowed = name not in CLUSTER_MAPS
        assert ("lr_from" in methods[name]) == borrowed and methods[name]["lr"] == methods["cgc_lora"]["lr"], name
        assert not borrowed or methods[name]["lr_from"] == "CGC-LoRA", name
    no_gate = json.loads((tmp_path / "cgc_no_gate" / "seed_0" / "gates.json").read_text())["tasks"]["add"]
    assert all(g == pytest.approx([1 / 3] * 3) for g in no_gate.values())  # its gate stayed uniform
    assert all(m["export_bytes"] > 0 for m in methods.values())
    assert (tmp_path / "shared_lora@served" / "seed_0").is_dir() and not (tmp_path / "cgc_lora@served").exists()
    markdown = (tmp_path / "report.md").read_text()
    assert "## Matched served rank" in markdown and "(CGC-LoRA's)" in markdown and "served at rank 12" in markdown
    controls = report["budgets"]["served"]["controls"]  # CGC-LoRA paired against each control beside it
    assert list(controls) == list(CONTROLS) and all(c["low"] <= c["difference"] <= c["high"] for c in controls.values())
    assert "- CGC-LoRA − CGC-LoRA, one cluster: " in markdown
    versus = report["budgets"]["served"]["controls_vs_baseline"]  # each control against the best baseline too
    best = report["budgets"]["served"]["comparison"]["baseline"]
    assert list(versus) == list(CONTROLS) and all(v["baseline"] == best for v in versus.values())
    assert f"- CGC-LoRA, one cluster − {LABELS[best]}: " in markdown
    # Gates for every method whose learned gate splits a task between shared and own experts, each with its figure
    # (not the frozen uniform control's, nor MOELoRA's, whose experts are all shared).
    assert list(report["gates"]) == ["cgc_lora", "cgc_one_cluster", "cgc_task_clusters"]
    for name, png in (("cgc_lora", "gates.png"), ("cgc_one_cluster", "gates_cgc_one_cluster.png")):
        assert f"{LABELS[name]} (served budget). Gates: on average" in markdown and f"]({png})" in markdown, name
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    tasks = report["gates"]["cgc_one_cluster"]["own_share"]
    assert set(tasks) == set(report["tasks"]) and all(0 <= v <= 1 for s in tasks.values() for v in s)
    both = run("recipes/compare.py", "--config", TINY, "--out", tmp_path, "--match", "trainable,served", *one)
    assert both.returncode == 0, (both.stdout + both.stderr)[-4000:]
    assert both.stdout.count("done earlier, kept") == 8 + 2  # the served runs, and the 2 trainable runs they were
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["budgets"]) == ["trainable", "served"]
    assert report["budgets"]["served"]["methods"] == methods  # the same runs, the same rows


def test_served_methods_may_take_the_lr_their_trainable_grid_chose_and_given_lrs_skip_the_grid(tmp_path):
    args = ["--methods", "shared_lora,moelora", "--match", "trainable,served", "--served_lr", "trainable"]
    args += ["--lr_grid", "3e-3,1e-2", "--grid_steps", "2", "--validation_per_task", "2", "--eval_examples", "2"]
    args += ["--seeds", "1", "--keep_checkpoints", "--lrs", "moelora=2e-3"]
    result = run("recipes/compare.py", "--config", TINY, "--out", tmp_path, *args, *FAST)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    budgets = report["budgets"]
    trainable, served = budgets["trainable"]["methods"]["shared_lora"], budgets["served"]["methods"]["shared_lora"]
    assert served["lr"] == trainable["lr"] and served["lr_from"] == "trainable budget" and "grid" not in served
    assert served["served_rank"] < trainable["served_rank"]  # another configuration, run apart
    assert not (tmp_path / "grid" / "shared_lora@served").exists() and (tmp_path / "shared_lora@served").is_dir()
    kept = tmp_path / "grid" / "shared_lora" / "lr_0.01"  # --keep_checkpoints: the grid run is left whole
    assert (kept / "adapters" / "cgc").is_dir() and any((kept / "checkpoints").glob("step_*"))
    # --lrs: MOELoRA runs no grid and trains at the given lr under both budgets, and the report says so.
    assert not (tmp_path / "grid" / "moelora").exists()
    for match, name in (("trainable", "moelora"), ("served", "moelora@served")):
        row = budgets[match]["methods"]["moelora"]
        assert row["lr"] == 2e-3 and row["lr_from"] == "given" and "grid" not in row
        assert yaml.safe_load((tmp_path / name / "seed_0" / "config.yaml").read_text())["train"]["lr"] == 2e-3
    assert "MOELoRA 0.002" in report["setup"]["tuning"] and "0.002 (given)" in (tmp_path / "report.md").read_text()
    refused = run("recipes/compare.py", "--config", TINY, "--out", tmp_path / "x", "--match", "served",
                  "--served_lr", "trainable", *FAST)  # fmt: skip
    assert refused.returncode == 2 and "add it to --match" in refused.stderr
    bad_lrs = {"shared_lora=1e-3": "not one of --methods", "moelora=0": "not a finite", "moelora=inf": "not a finite",
               "moelora=1e-3,moelora=2e-3": "given twice", "cgc_no_gate=1e-3": "takes cgc_lora's lr"}  # fmt: skip
    for bad, why in bad_lrs.items():
        refused = run("recipes/compare.py", "--config", TINY, "--out", tmp_path / "y", "--methods",
                      "moelora,cgc_lora,cgc_no_gate", "--lrs", bad, *FAST)  # fmt: skip
        assert refused.returncode == 2 and why in refused.stderr and "Traceback" not in refused.stderr, bad
    assert not (tmp_path / "y").exists()  # refused before anything was written
