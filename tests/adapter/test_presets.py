"""The four methods of the comparison (shared LoRA, per-task LoRA, MOELoRA, CGC-LoRA: README, top) as configurations
of the same layer, with matched trainable-parameter budgets."""

import dataclasses

import pytest

import cgc
from cgc.adapter.presets import matched_budget, smallest_budget, total_rank
from tests.conftest import CLUSTERS, tiny_llama

TASKS = [t for ts in CLUSTERS.values() for t in ts]


def lora_params(config, d_in=32, d_out=32, layers=2):
    # q_proj only: (d_in + d_out) per unit of rank, per layer
    return total_rank(config) * (d_in + d_out) * layers


def test_each_preset_has_the_shape_of_its_method():
    shared = cgc.presets.shared_lora(TASKS, r=8)
    assert list(shared.clusters) == ["all"] and (shared.num_shared_experts, shared.num_task_experts) == (1, 0)
    per_task = cgc.presets.per_task_lora(TASKS, r=8)
    assert per_task.clusters == {t: [t] for t in TASKS}
    assert (per_task.num_shared_experts, per_task.num_task_experts) == (0, 1)
    moe = cgc.presets.moelora(TASKS, num_experts=4, r=2)
    assert list(moe.clusters) == ["all"] and moe.num_shared_experts == 4 and moe.num_task_experts == 0
    ours = cgc.presets.cgc_lora(CLUSTERS, num_shared=2, num_task=1, r=2)
    assert ours.clusters == CLUSTERS
    for config in (shared, per_task, moe, ours):
        # one alpha and the rsLoRA rule for every method: their first steps are of one size (test_step_size.py)
        assert (config.alpha, config.scaling) == (16.0, "rslora")


@pytest.mark.parametrize("budget", [45, 90])
def test_matched_budget_gives_equal_trainable_parameters_when_ranks_divide(budget):
    # 5 tasks; CGC with S=2, K=1 on 2 clusters has 2+2 + 2+3 = 9 experts; MOELoRA 5 experts.
    configs = matched_budget(CLUSTERS, budget_rank=budget, moe_experts=5, target_modules=["q_proj"])
    assert set(configs) == {"shared_lora", "per_task_lora", "moelora", "cgc_lora"}
    counts = {}
    for name, config in configs.items():
        assert total_rank(config) == budget, name
        model = cgc.attach(tiny_llama(), config)
        lora_only = sum(p.numel() for n, p in model.trainable_parameters() if not n.endswith("gate_logits"))
        assert lora_only == lora_params(config)
        counts[name] = lora_only
    assert len(set(counts.values())) == 1


def test_matched_budget_raises_a_small_budget_so_that_no_expert_rank_is_below_the_minimum():
    # The case: rank 16 for 11 tasks in 4 clusters gave rank-1 experts; now every rank is >= 4.
    clusters = {"a": ["t1", "t2", "t3"], "b": ["t4", "t5", "t6"], "c": ["t7", "t8"], "d": ["t9", "t10", "t11"]}
    for min_rank in (1, 4, 6):
        for budget in (1, 16, 50, 200):
            configs = matched_budget(clusters, budget_rank=budget, moe_experts=4, min_rank=min_rank)
            assert min(c.r for c in configs.values()) >= min_rank, (budget, min_rank)
            # CGC-LoRA has 4 x 2 shared + 11 task experts = 19: the smallest budget that satisfies everyone.
            assert smallest_budget(clusters, 2, 1, 4, min_rank) == 19 * min_rank
            assert total_rank(configs["cgc_lora"]) == max(budget, 19 * min_rank) // 19 * 19
            assert total_rank(configs["shared_lora"]) == total_rank(configs["cgc_lora"])  # the same parameters
    with pytest.raises(ValueError, match="must be >= 1"):
        matched_budget(CLUSTERS, budget_rank=0)
    with pytest.raises(ValueError, match="must be >= 1"):
        matched_budget(CLUSTERS, budget_rank=8, min_rank=0)


DEMO_CLUSTERS = {"words": ["a", "b", "c"], "numbers": ["d", "e", "f"], "letters": ["g", "h", "i"]}


def test_a_served_budget_gives_every_method_cgc_loras_rank_per_task():
    configs = matched_budget(DEMO_CLUSTERS, 120, match="served", methods=tuple(cgc.presets.LABELS))
    ours = configs["cgc_lora"]
    assert ours == matched_budget(DEMO_CLUSTERS, 120)["cgc_lora"]  # CGC-LoRA itself is the same under both budgets
    served = {name: config.exported_rank for name, config in configs.items()}
    assert served.pop("moelora_per_cluster") == 20  # 5 experts of rank 24 // 5: as near as integer ranks allow
    assert set(served.values()) == {ours.exported_rank} == {24}


def test_the_controls_take_one_piece_of_cgc_lora_away():
    configs = matched_budget(DEMO_CLUSTERS, 120, methods=tuple(cgc.presets.LABELS))
    ours = configs["cgc_lora"]
    no_gate = configs["cgc_no_gate"]
    assert no_gate == dataclasses.replace(ours, train_gate=False)
    assert (
        cgc.attach(tiny_llama(), dataclasses.replace(no_gate, target_modules=["q_proj"])).optimizer_groups(1, 1)[-1][
            "name"
        ]
        == "experts"
    )  # no gate parameters at all
    per_cluster = configs["moelora_per_cluster"]
    assert per_cluster.clusters == ours.clusters and per_cluster.num_task_experts == 0
    assert per_cluster.num_shared_experts == 5  # CGC-LoRA's 15 experts over 3 clusters, all shared
    assert list(configs["cgc_one_cluster"].clusters) == ["all"]
    assert configs["cgc_task_clusters"].clusters == {t: [t] for ts in DEMO_CLUSTERS.values() for t in ts}
    for name in ("cgc_one_cluster", "cgc_task_clusters"):
        assert (configs[name].num_shared_experts, configs[name].num_task_experts) == (2, 1)
    for name, config in configs.items():  # the trainable budget, as integer ranks allow
        assert 120 - total_rank(config) < max(config.num_experts(c) for c in config.clusters) * len(config.clusters)
        assert total_rank(config) <= 120, name


def test_shared_and_own_experts_keep_the_ratio_of_their_ranks():
    configs = matched_budget(DEMO_CLUSTERS, 168, methods=("cgc_lora", "shared_lora"), rank_ratio=(2, 1))
    ours = configs["cgc_lora"]
    assert (ours.shared_rank, ours.task_rank) == (16, 8) and total_rank(ours) == 3 * 2 * 16 + 9 * 8 == 168
    assert configs["shared_lora"].r == 168
    with pytest.raises(ValueError, match="match must be one of"):
        matched_budget(DEMO_CLUSTERS, 120, match="both")
    with pytest.raises(ValueError, match="unknown methods"):
        matched_budget(DEMO_CLUSTERS, 120, methods=("cgc",))
