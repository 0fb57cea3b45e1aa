"""compare.py picks each method's learning rate from validation scores alone, and refuses a validation set
that would be tuning on the test set."""

import json
import subprocess
import sys
from pathlib import Path

import cgc
from cgc.data.validation_split import write_jsonl
from cgc.evaluation import pick_examples
from cgc.evaluation.generation import greedy_answers
from cgc.models.base_model import load_recipe_model
from cgc.recipe.config import load_recipe_config
from tests.conftest import ROOT
from tests.recipes.test_compare import FAST, TINY

# Inputs no demo file has (words outside its list, numbers above 30): neither trained on nor evaluated.
FRESH = {"words": "kiwi plum fig", "numbers": "97 95", "letters": "zebra"}


def compare(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "recipes/compare.py", "--config", TINY, *map(str, args), *FAST]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)


def rigged_validation(path: Path) -> None:
    """One example per task whose target is the untrained model's own greedy answer: only an lr too small to
    change the model scores 1.0 on it (the eval set's real targets favour neither lr after 2 steps)."""
    cfg = load_recipe_config(ROOT / TINY, FAST)
    base, tokenizer = load_recipe_model("tiny-llama", None, "none", "float32", seed=cfg.seed)
    model = cgc.attach(base, cfg.cgc).eval()  # B = 0: exactly the base model
    rows = [{"task": t, "input": FRESH[c], "target": ""} for c, tasks in cfg.cgc.clusters.items() for t in tasks]
    rows = pick_examples(rows, 1, model.tasks)  # the order and batch finetune.py's eval will use
    answers = greedy_answers(model, tokenizer, rows, cfg.eval.max_new_tokens, cfg.data.system_prompt)
    write_jsonl(path, [{**row, "target": answer} for row, answer in zip(rows, answers, strict=True)])


def test_the_learning_rate_is_chosen_on_the_validation_set_alone(tmp_path):
    rigged_validation(tmp_path / "validation.jsonl")
    # The lr the validation set favours is listed last: a choice by eval score (0 for both) or by order fails.
    grid = [
        "--lr_grid",
        "3e-2,1e-7",
        "--grid_steps",
        "2",
        "--seeds",
        "1",
        "--eval_examples",
        "2",
        "--match",
        "trainable",
    ]
    result = compare(
        "--out", tmp_path / "out", "--methods", "cgc_lora", "--validation_files", tmp_path / "validation.jsonl", *grid
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    row = json.loads((tmp_path / "out" / "report.json").read_text())["budgets"]["trainable"]["methods"]["cgc_lora"]
    assert row["grid"]["1e-07"] == 1.0 and row["grid"]["0.03"] < 1.0
    assert row["lr"] == 1e-7 and "-> lr 1e-07" in result.stdout


def test_validation_files_that_overlap_the_eval_files_are_refused(tmp_path):
    evaluation = [json.loads(line) for line in (ROOT / "recipes/data/demo/eval.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "validation.jsonl", evaluation[:5])
    result = compare("--out", tmp_path / "out", "--validation_files", tmp_path / "validation.jsonl")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "--validation_files: 5 examples are also in the eval files" in result.stderr
    assert not (tmp_path / "out" / "grid").exists()  # refused before anything trained
