"""compare.py's learning-rate rules: which controls borrow CGC-LoRA's lr, and what --lrs may give."""

import pytest

from cgc.adapter.presets import CLUSTER_MAPS, CONTROLS, takes_our_lr
from cgc.recipe import ConfigError
from cgc.recipe.comparison import parse_given_lrs

ALL = ["moelora", "cgc_lora", *CONTROLS]


def test_controls_that_keep_the_cluster_map_borrow_our_lr_and_the_others_do_not():
    assert [m for m in ALL if takes_our_lr(m, ALL)] == ["cgc_no_gate", "moelora_per_cluster"]
    assert set(CLUSTER_MAPS) == {"cgc_one_cluster", "cgc_task_clusters"}
    assert not any(takes_our_lr(m, [m]) for m in CONTROLS)  # without CGC-LoRA beside it, a control is a method


def test_lrs_may_give_a_cluster_map_its_own_lr_but_not_a_control_that_borrows_ours():
    given = parse_given_lrs("cgc_lora=1.25e-4,cgc_one_cluster=2.5e-4,cgc_task_clusters=5e-4", ALL)
    assert given == {"cgc_lora": 1.25e-4, "cgc_one_cluster": 2.5e-4, "cgc_task_clusters": 5e-4}
    for borrowing in ("cgc_no_gate", "moelora_per_cluster"):
        with pytest.raises(ConfigError, match="takes cgc_lora's lr"):
            parse_given_lrs(f"{borrowing}=1e-3", ALL)
    assert parse_given_lrs("cgc_no_gate=1e-3", ["cgc_no_gate", "moelora"]) == {"cgc_no_gate": 1e-3}
