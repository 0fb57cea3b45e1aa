import pytest

import cgc
from tests.conftest import make_config


def test_tasks_and_ids_follow_cluster_order():
    cfg = make_config()
    assert cfg.tasks == ["synonym", "antonym", "add", "mul", "sub"]
    assert cfg.task_map.cluster_of("mul") == "math" and cfg.task_map.id_of("mul") == 3
    assert cfg.num_experts("math") == 2 + 1 * 3
    assert cfg.experts_per_task == 3 and cfg.exported_rank == 12
    # rslora: at a uniform gate (1/3 each) every expert weighs alpha / sqrt(task rank) = 8 / sqrt(12)
    assert cfg.gate_multipliers() == pytest.approx([8 * 3 / 12**0.5] * 3)
    assert make_config(scaling="lora").gate_multipliers() == [2.0, 2.0, 2.0]  # alpha / r, gate summing to 1


def test_shared_and_task_experts_may_have_their_own_rank():
    cfg = make_config(r_shared=6, r_task=2)
    assert (cfg.shared_rank, cfg.task_rank, cfg.exported_rank) == (6, 2, 2 * 6 + 1 * 2)
    assert cfg.cluster_rank("math") == 2 * 6 + 3 * 2
    assert make_config(scaling="lora", r_shared=6, r_task=2).gate_multipliers() == [8 / 6, 8 / 6, 8 / 2]


def test_a_config_saved_before_a_key_existed_loads_with_what_it_was_trained_with():
    saved = make_config().to_dict()
    for key in ("scaling", "gate_init", "train_gate", "r_shared", "r_task"):
        del saved[key]
    old = cgc.CGCLoraConfig.from_dict(saved)
    assert (old.scaling, old.gate_init, old.train_gate, old.shared_rank) == ("lora", "uniform", True, 4)


def test_json_round_trip(tmp_path):
    cfg = make_config(target_modules=r".*\.(q|v)_proj", dropout=0.1)
    assert cgc.CGCLoraConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path)
    assert cgc.CGCLoraConfig.load(tmp_path) == cfg


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"clusters": {"a": ["x", "y"], "b": ["y"]}}, "task 'y' appears in cluster 'a' and again in 'b'"),
        ({"clusters": {"a": ["x"], "empty": []}}, "cluster 'empty' is empty"),
        ({"clusters": {}}, "clusters must be a non-empty mapping"),
        ({"clusters": {"a.b": ["x"]}}, "cluster name 'a.b'"),
        ({"r": 0}, "r must be an integer >= 1, got 0"),
        ({"num_shared_experts": 0, "num_task_experts": 0}, "(S + K) is 0"),
        ({"num_task_experts": -1}, "num_task_experts must be an integer >= 0"),
        ({"alpha": 0}, "alpha must be a number > 0"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"target_modules": []}, "target_modules must be a non-empty list"),
        ({"scaling": "sqrt"}, "scaling must be one of ('rslora', 'lora')"),
        ({"gate_init": "zeros"}, "gate_init must be one of ('uniform', 'own', 'random')"),
        ({"r_task": 0}, "r_task must be an integer >= 1 or null"),
    ],
)
def test_bad_config_names_the_problem(overrides, expected):
    with pytest.raises(ValueError) as err:
        make_config(**overrides)
    assert expected in str(err.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as err:
        make_config(r=0, alpha=-1, dropout=2.0)
    message = str(err.value)
    assert "r must be" in message and "alpha must be" in message and "dropout must be" in message


def test_unknown_json_key_is_an_error():
    data = make_config().to_dict() | {"rank": 3}
    with pytest.raises(ValueError, match="unknown CGCLoraConfig keys \\['rank'\\]"):
        cgc.CGCLoraConfig.from_dict(data)
