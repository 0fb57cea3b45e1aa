"""The seesaw report's arithmetic and files on hand-made scores (the tiny end-to-end run scores ~0 everywhere)."""

import json

import numpy as np
import pytest

from cgc.adapter.presets import LABELS
from cgc.analysis.gate_report import method_gates, own_share, summary
from cgc.analysis.report import (
    TASK_HIDDEN,
    best_baseline,
    build_report,
    comparison_lines,
    comparisons,
    held_out,
    inputs_note,
    lrs_within_noise,
    overlap_note,
    per_example_scores,
    seed_means,
    tuning_note,
    verdict,
)
from cgc.analysis.report_files import markdown, write_report
from cgc.analysis.stats import paired_bootstrap
from cgc.data.validation_split import count_shared, example_keys
from cgc.evaluation import task_metrics

TASKS = {"add": "numbers", "uppercase": "words", "length": "letters"}


def seed_run(scores: dict[str, float], params: int) -> dict:
    metric = {"add": "exact_match", "uppercase": "exact_match", "length": "rouge_l"}
    evaluation = {
        "tasks": {
            t: {"cluster": c, "metric": metric[t], "score": scores[t], "exact_match": scores[t], "n": 16}
            for t, c in TASKS.items()
        }
    }
    summary = {"trainable_params": params, "final_loss": 0.5, "tokens_per_s": 100.0}
    return {"eval": evaluation, "summary": summary | {"examples_per_task": {"add": 30, "uppercase": 25, "length": 28}}}


def method(*seeds: dict, params: int = 1000, lr: float = 1e-3) -> dict:
    return {
        "config": {"r": 8, "experts_per_layer": 15, "total_rank": 120, "served_rank": 24, "clusters": 3},
        "lr": lr,
        "gate_lr": 5e-2,
        "grid": {"0.001": 0.4, "0.003": 0.3},
        "export_bytes": 2_500_000,
        "seeds": [seed_run(s, params) for s in seeds],
    }


SETUP = {"command": "python recipes/compare.py --config x.yaml", "model": "m", "steps": 10, "budget_rank": 120}
SETUP |= {"examples_per_task": 16, "seeds": 2, "served_rank": 24}


def test_means_stds_deltas_and_worst_drop_over_seeds():
    def scores(add, uppercase, length):
        return {"add": add, "uppercase": uppercase, "length": length}

    runs = {
        "shared_lora": method(scores(0.9, 0.2, 0.5), scores(0.7, 0.2, 0.5)),
        "per_task_lora": method(scores(0.5, 0.8, 0.5), scores(0.5, 0.8, 0.5)),
        "cgc_lora": method(scores(0.75, 0.7, 0.6), scores(0.75, 0.7, 0.6)),
    }
    report = build_report({"trainable": runs}, SETUP)
    methods = report["budgets"]["trainable"]["methods"]
    shared, cgc = methods["shared_lora"], methods["cgc_lora"]
    assert shared["scores"] == pytest.approx({"add": 0.8, "uppercase": 0.2, "length": 0.5})
    assert shared["scores_std"]["add"] == pytest.approx(0.1414, abs=1e-4) and shared["scores_std"]["length"] == 0
    assert shared["seed_means"] == pytest.approx([1.6 / 3, 1.4 / 3])
    assert shared["mean"] == pytest.approx(0.5) and shared["mean_std"] == pytest.approx(0.0471, abs=1e-4)
    assert shared["delta_vs_per_task_lora"] == pytest.approx({"add": 0.3, "uppercase": -0.6, "length": 0.0})
    assert shared["worst_drop"] == pytest.approx(0.6)
    assert cgc["worst_drop"] == pytest.approx(0.1) and cgc["mean"] == pytest.approx(2.05 / 3)
    assert methods["per_task_lora"]["worst_drop"] == 0.0
    assert best_baseline(methods) == "per_task_lora"  # 0.6 beats shared LoRA's 0.5
    assert shared["lr_at_edge"]  # 1e-3 is the grid's smallest: the best may lie below it
    assert shared["examples_per_task"] == {"add": 30, "uppercase": 25, "length": 28}
    text = markdown(report)
    row = "| LoRA (shared) | 3 | 8 | 15 | 24 | 1,000 | 2.5 MB | 0.001 (edge) | 0.500 ± 0.047 | 0.500 | 0.600 |"
    assert row in text and "widen --lr_grid" in text
    assert "| uppercase | exact_match | -0.600 | +0.000 | -0.100 |" in text
    assert "| add | exact_match | 0.800 ± 0.141 |" in text
    assert "| LoRA (shared) | 0.400 | 0.300 | 0.001 |" in text  # the grid table


def test_the_verdict_says_no_significant_difference_when_the_interval_contains_zero():
    within = {"method_label": "CGC-LoRA", "baseline_label": "MOELoRA"}
    within |= {"difference": 0.02, "low": -0.01, "high": 0.05, "significant": False}
    assert verdict(within).endswith("**no significant difference**.")
    above = {**within, "low": 0.01, "significant": True}
    assert "significantly better" in verdict(above)
    below = {**within, "difference": -0.04, "low": -0.07, "high": -0.01, "significant": True}
    assert "significantly worse" in verdict(below)


def test_the_report_says_when_the_input_hides_the_task():
    hidden = inputs_note([{"task": "a", "input": "x"}, {"task": "b", "input": "x"}], [{"task": "a", "input": "x"}])
    assert hidden.startswith(TASK_HIDDEN) and "100% of the eval prompts" in hidden
    train = [{"task": "a", "input": "A: x"}, {"task": "b", "input": "B: x"}]
    named = inputs_note(train, [{"task": "a", "input": "A: y"}])
    assert named.startswith("every prompt tells its task")


def test_gate_shares_per_block_are_the_weight_on_own_experts_averaged_over_projections_and_seeds():
    def gates(own_q, own_v):  # S = 2 shared, K = 1 own; two blocks, two projections each
        layers = {}
        for block in (0, 1):
            for proj, own in (("q_proj", own_q[block]), ("v_proj", own_v[block])):
                layers[f"model.layers.{block}.self_attn.{proj}"] = [(1 - own) / 2, (1 - own) / 2, own]
        return {"num_shared_experts": 2, "tasks": {"add": layers}}

    shares, uniform, start = own_share([gates((0.2, 0.6), (0.4, 0.8)), gates((0.4, 0.6), (0.4, 1.0))])
    assert uniform == pytest.approx(1 / 3) and start is None  # files that do not say where the gates started
    assert shares["add"] == pytest.approx([0.35, 0.75])
    line = summary(shares, uniform, start)
    assert line.startswith("Gates: on average 45% of each task's gate is on its cluster's shared experts")
    assert "(a uniform gate: 33%)" in line and "own share 35% in the first third of the blocks, 75% in the last" in line


def test_the_gate_summary_gives_each_named_task_the_share_its_label_says():
    """The most-shared task's figure is its shared share: a 47 % own share once read as '47 % shared'."""

    def gates(own):  # S = 2 shared, K = 1 own; one block
        return {"model.layers.0.self_attn.q_proj": [(1 - own) / 2, (1 - own) / 2, own]}

    shares, uniform, _ = own_share([{"num_shared_experts": 2, "tasks": {"add": gates(0.3), "upper": gates(0.9)}}])
    line = summary(shares, uniform)
    assert "most on its own experts: `upper` (90% own)" in line
    assert "most on the shared ones: `add` (70% shared)" in line


def test_the_gate_summary_names_a_start_off_uniform():
    """An own-biased start is off uniform before any step: the report must say where the gates started."""

    def gates(start):
        layer = {"model.layers.0.self_attn.q_proj": [0.2, 0.2, 0.6]}
        return {"num_shared_experts": 2, "start_own_share": start, "tasks": {"add": layer}}

    shares, uniform, start = own_share([gates(0.576), gates(0.576)])
    assert start == pytest.approx(0.576)
    assert "(a uniform gate: 33%; these gates started at 58%)" in summary(shares, uniform, start)
    shares, uniform, start = own_share([gates(1 / 3)])
    assert "(a uniform gate: 33%)" in summary(shares, uniform, start)
    assert own_share([gates(0.576), gates(1 / 3)])[2] is None  # seeds that started apart: no single start


def test_every_gated_method_gets_its_gate_line_and_figure_named_by_method_and_budget(tmp_path):
    """One cluster's gates are reported beside CGC-LoRA's; a method whose experts are all shared (MOELoRA: no own
    share to give) and a run without gates.json add nothing."""

    def run_dir(name, shared, gate):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        layer = {"model.layers.0.self_attn.q_proj": gate}
        d.joinpath("gates.json").write_text(json.dumps({"num_shared_experts": shared, "tasks": {"add": layer}}))
        return d

    runs = {
        "cgc_lora": [run_dir("ours", 2, [0.3, 0.3, 0.4])],
        "cgc_one_cluster": [run_dir("one", 2, [0.1, 0.1, 0.8])],
        "moelora": [run_dir("moe", 4, [0.25] * 4)],
        "cgc_task_clusters": [tmp_path / "runs" / "never_written"],
    }
    gates = method_gates(runs, "served")
    assert list(gates) == ["cgc_lora", "cgc_one_cluster"]
    assert gates["cgc_one_cluster"]["own_share"] == {"add": pytest.approx([0.8])}
    assert gates["cgc_one_cluster"]["budget"] == "served"
    report = build_report({"served": {"shared_lora": method(dict.fromkeys(TASKS, 1.0))}}, SETUP) | {"gates": gates}
    written = {p.name for p in write_report(report, tmp_path)}
    assert {"gates.png", "gates_cgc_one_cluster.png"} <= written
    text = (tmp_path / "report.md").read_text()
    assert "CGC-LoRA, one cluster (served budget). Gates: on average 20% of each task's gate" in text
    assert "](gates_cgc_one_cluster.png)" in text and "CGC-LoRA (served budget). Gates: on average 60%" in text


def test_the_controls_are_not_baselines():
    """CGC-LoRA is compared with the best baseline; its own controls (variants of it) never count as one."""
    runs = {
        "moelora": method({"add": 0.4, "uppercase": 0.4, "length": 0.4}),
        "cgc_lora": method({"add": 0.5, "uppercase": 0.5, "length": 0.5}),
        "cgc_no_gate": method({"add": 0.9, "uppercase": 0.9, "length": 0.9}),
    }
    methods = build_report({"trainable": runs}, SETUP)["budgets"]["trainable"]["methods"]
    assert best_baseline(methods) == "moelora"


def test_without_per_task_lora_there_are_no_deltas_and_the_files_are_written(tmp_path):
    runs = {"shared_lora": method({"add": 1.0, "uppercase": 0.0, "length": 0.5})}
    report = build_report({"trainable": runs, "served": runs}, SETUP)
    row = report["budgets"]["trainable"]["methods"]["shared_lora"]
    assert "worst_drop" not in row
    assert row["mean_std"] == 0.0  # one seed
    written = write_report(report, tmp_path)
    assert {p.name for p in written} == {"report.json", "report.md", "seesaw.png", "budgets.png"}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    text = (tmp_path / "report.md").read_text()
    assert "worst drop" not in text and "## Matched served rank" in text and "served at rank 24" in text
    for image in ("seesaw.png", "budgets.png"):
        assert (tmp_path / image).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "gates.png").exists()


def test_the_tuning_note_says_which_lrs_were_given_and_whether_a_grid_ran():
    grid = [1e-4, 2e-4]
    ran = tuning_note(grid, 50, 125, False, 1e-2, [0], {"moelora": 5e-4}, grid_ran=True)
    assert "best mean validation score of 50-step runs (seed 0)" in ran and "MOELoRA 0.0005" in ran
    two = tuning_note(grid, 50, 125, False, 1e-2, [3, 4])
    assert "50-step runs (seeds 3, 4: their mean)" in two
    none = tuning_note(grid, 50, 125, False, 1e-2, [0], {"moelora": 5e-4, "cgc_lora": 1e-4}, grid_ran=False)
    assert none.startswith("No lr grid ran") and "validation score" not in none and "CGC-LoRA 0.0001" in none
    assert "for every method not given" in tuning_note([3e-4], 50, 0, False, 1e-2, [0])


def test_the_grid_marks_lrs_the_validation_split_cannot_tell_from_the_choice(tmp_path):
    """A paired bootstrap over the same validation examples and grid seeds: one answer apart is noise, all answers
    apart is not."""

    def grid_run(name: str, wrong: int, examples: int = 40, first: int = 0) -> str:
        run = tmp_path / name
        run.mkdir()
        rows = [
            {
                "task": t,
                "input": f"{t} {i}",
                "target": "x",
                "prediction": "y" if t == "a" and first <= i < first + wrong else "x",
            }
            for t in ("a", "b")
            for i in range(examples)
        ]
        (run / "eval_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return run

    runs = {"0.001": [grid_run("a", 0)], "0.002": [grid_run("b", 1)], "0.004": [grid_run("c", 40)]}
    metrics = task_metrics(["a", "b"], "exact_match", {})
    assert lrs_within_noise(runs, "0.001", metrics) == ["0.002"]
    assert lrs_within_noise(runs, "0.002", metrics) == ["0.001"]  # a tie either way; all of `a` wrong is not
    # Seeds pool: two answers apart is noise in one run, not when five seeds each miss two others.
    one = {"0.001": [grid_run("d", 0)], "0.002": [grid_run("e", 2)]}
    five = {"0.001": [grid_run(f"f{s}", 0) for s in range(5)]}
    five["0.002"] = [grid_run(f"g{s}", 2, first=2 * s) for s in range(5)]
    assert lrs_within_noise(one, "0.001", metrics) == ["0.002"]
    assert lrs_within_noise(five, "0.001", metrics) == []
    with pytest.raises(RuntimeError, match="different validation examples"):
        lrs_within_noise({"0.001": [grid_run("h", 0)], "0.002": [grid_run("i", 0, examples=39)]}, "0.001", metrics)

    row = method({"add": 0.5, "uppercase": 0.5, "length": 0.5}) | {"grid_ties": ["0.003"]}
    text = markdown(build_report({"trainable": {"moelora": row}}, SETUP))
    assert "| MOELoRA | 0.400 | 0.300 ≈ | 0.001 |" in text and "validation cannot tell this lr" in text


def test_eval_examples_that_are_training_examples_are_counted_and_left_out_of_the_held_out_numbers(tmp_path):
    """Scores of eval examples whose (task, input) training holds measure recall; the held-out numbers drop them
    (a task with none left drops out), and report.md shows both."""

    def run(name: str, right: int) -> str:  # `a`'s first `right` answers right, every `b` answer right
        rows = [
            {"task": "a", "input": f"a {i}", "target": "x", "prediction": "x" if i < right else "y"} for i in range(4)
        ]
        rows += [{"task": "b", "input": f"b {i}", "target": "x", "prediction": "x"} for i in range(3)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name

    scores, order = per_example_scores([run("s0", 2), run("s1", 3)], task_metrics(["a", "b"], "exact_match", {}))
    train = [{"task": "a", "input": "a 0"}, {"task": "a", "input": "a 1"}, {"task": "b", "input": "a 2"}]
    train += [{"task": "b", "input": f"b {i}"} for i in range(3)]  # every `b` eval example is trained on
    trained = example_keys(train)
    assert count_shared(order, trained) == {"a": 2, "b": 3}  # `a 2` under task b is not `a`'s example
    held = held_out(scores, order, trained)
    assert list(held) == ["a"] and held["a"].tolist() == [[0.0, 0.0], [1.0, 0.0]]  # a 2 and a 3, per seed
    assert seed_means(scores) == [0.75, 0.875] and seed_means(held) == [0.0, 0.5]  # (2/4 + 1) / 2, (3/4 + 1) / 2

    note = overlap_note({"a": 2, "b": 3}, order, interval=True)
    assert note.startswith("5 of the 7 eval examples have a training example's (task, input) (a 2, b 3)")
    assert "(b drop out: it averages 1 task), and so do the held-out intervals" in note
    assert "interval" not in overlap_note({"a": 2, "b": 3}, order, interval=False)  # no CGC-LoRA, no interval
    assert "no held-out numbers" in overlap_note({"a": 4, "b": 3}, order, interval=True)
    runs = {"cgc_lora": method({"add": 1.0, "uppercase": 0.0, "length": 0.5})}
    report = build_report({"trainable": runs}, SETUP | {"eval_overlap": note})
    report["budgets"]["trainable"]["methods"]["cgc_lora"] |= {"held_out_mean": 0.25, "held_out_mean_std": 0.05}
    comparison = {"method": "cgc_lora", "method_label": "CGC-LoRA", "baseline": "moelora", "baseline_label": "MOELoRA"}
    comparison |= {"difference": -0.1, "low": -0.2, "high": 0.0}
    report["budgets"]["trainable"] |= {
        "comparison": comparison | {"significant": False},
        "comparison_held_out": comparison | {"difference": 0.01, "low": -0.05, "high": 0.07, "significant": False},
    }
    text = markdown(report)
    assert note in text and "| held-out mean |" in text and "| 0.500 ± 0.000 | 0.250 ± 0.050 |" in text
    assert "Held-out eval examples only: CGC-LoRA − MOELoRA: +0.010 (95 % interval -0.050 to +0.070)" in text


def test_cgc_lora_is_paired_against_the_best_baseline_and_each_control_run_beside_it():
    """One cluster against the user's map (and the other controls) is what tells whether the split, the gate or the
    task experts pay on this data: each gets its own paired interval, next to the best baseline's, on every eval
    example and on the held-out ones."""
    rng = np.random.default_rng(0)
    ours = {"a": rng.integers(0, 2, (2, 30)).astype(float), "b": rng.integers(0, 2, (2, 30)).astype(float)}
    scored = {
        "cgc_lora": ours,
        "moelora": {t: np.zeros_like(s) for t, s in ours.items()},  # CGC-LoRA clearly better
        "cgc_one_cluster": {t: s.copy() for t, s in ours.items()},  # identical: a zero interval
        "cgc_no_gate": {t: rng.integers(0, 2, s.shape).astype(float) for t, s in ours.items()},
        "per_task_lora": {t: np.ones_like(s) for t, s in ours.items()},  # not the chosen baseline: no interval
    }
    held = {m: {"a": s["a"][:, :10]} for m, s in scored.items()}
    found = comparisons(scored, held, "moelora")
    assert list(found) == ["comparison", "comparison_held_out", "controls", "controls_held_out"] + [
        "controls_vs_baseline",
        "controls_vs_baseline_held_out",
    ]

    def expected(other: str, ours: dict, theirs: dict, name: str = "cgc_lora") -> dict:
        names = {"method": name, "method_label": LABELS[name], "baseline": other, "baseline_label": LABELS[other]}
        return names | paired_bootstrap(ours, theirs)

    assert found["comparison"] == expected("moelora", ours, scored["moelora"])
    assert found["comparison_held_out"] == expected("moelora", held["cgc_lora"], held["moelora"])
    assert found["controls"] == {m: expected(m, ours, scored[m]) for m in ("cgc_one_cluster", "cgc_no_gate")}
    assert found["controls_held_out"] == {
        m: expected(m, held["cgc_lora"], held[m]) for m in ("cgc_one_cluster", "cgc_no_gate")
    }
    one = found["controls"]["cgc_one_cluster"]
    assert (one["difference"], one["low"], one["high"], one["significant"]) == (0.0, 0.0, 0.0, False)
    assert found["controls"]["cgc_no_gate"]["difference"] != 0.0  # paired with its own scores, not CGC-LoRA's
    lines = comparison_lines(found)
    assert lines[0].startswith("CGC-LoRA − MOELoRA: +") and lines[0].endswith("CGC-LoRA is significantly better.")
    assert lines[1].startswith("Held-out eval examples only: CGC-LoRA − MOELoRA: +")
    assert lines[2] == "Against its controls (what each part adds here; every eval example):"
    assert lines[3] == (
        "- CGC-LoRA − CGC-LoRA, one cluster: +0.000 (95 % interval +0.000 to +0.000): **no significant difference**."
    )
    assert lines[5] == "Against its controls (what each part adds here; held-out eval examples only):"
    assert lines[8] == "CGC-LoRA's controls against the best baseline (every eval example):"
    assert lines[9].startswith("- CGC-LoRA, one cluster − MOELoRA: +")
    assert lines[9].endswith("CGC-LoRA, one cluster is significantly better.")
    assert len(lines) == 14
    no_baseline = comparisons(scored, {}, None)  # no baseline run, nothing held out: the controls still
    assert no_baseline == {"controls": found["controls"]}
    assert comparisons({"cgc_lora": ours}, {}, None) == {} and comparison_lines({}) == []


def test_a_control_run_without_cgc_lora_is_paired_against_the_best_baseline():
    """`--methods cgc_one_cluster,moelora` (the configuration a user may keep, without CGC-LoRA's map): one cluster
    − MOELoRA with its own scores, on every eval example and on the held-out ones."""
    rng = np.random.default_rng(1)
    one = {"a": rng.integers(0, 2, (3, 40)).astype(float), "b": rng.integers(0, 2, (3, 40)).astype(float)}
    moe = {t: rng.integers(0, 2, s.shape).astype(float) for t, s in one.items()}
    held = {"cgc_one_cluster": {"a": one["a"][:, :20]}, "moelora": {"a": moe["a"][:, :20]}}
    found = comparisons({"cgc_one_cluster": one, "moelora": moe}, held, "moelora")
    assert list(found) == ["controls_vs_baseline", "controls_vs_baseline_held_out"]
    got = found["controls_vs_baseline"]["cgc_one_cluster"]
    assert got == {"method": "cgc_one_cluster", "method_label": "CGC-LoRA, one cluster", "baseline": "moelora",
                   "baseline_label": "MOELoRA"} | paired_bootstrap(one, moe)  # fmt: skip
    assert found["controls_vs_baseline_held_out"]["cgc_one_cluster"]["difference"] == pytest.approx(
        paired_bootstrap(held["cgc_one_cluster"], held["moelora"])["difference"]
    )
    lines = comparison_lines(found)
    assert lines[0] == "CGC-LoRA's controls against the best baseline (every eval example):"
    assert lines[1].startswith("- CGC-LoRA, one cluster − MOELoRA: ") and lines[2].endswith("(held-out):")
    assert comparisons({"cgc_one_cluster": one}, {}, None) == {}  # no baseline run: nothing to pair
