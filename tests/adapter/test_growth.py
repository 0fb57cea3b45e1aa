"""Growing a trained adapter by new tasks (cgc.adapter.growth): the trained tasks compute exactly what they did."""

import dataclasses
import hashlib

import pytest
import torch

import cgc
from cgc.adapter import AdapterConfigError
from cgc.adapter.growth import attach_grown, grow
from tests.conftest import CLUSTERS, batch, make_config, randomize_adapter, tiny_llama

# one task appended to a trained cluster, one new cluster
WANTED = {"lexical": ["synonym", "antonym"], "math": ["add", "mul", "sub", "div"], "style": ["formal", "casual"]}


def digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture
def trained(tmp_path):
    model = cgc.attach(tiny_llama(), make_config())
    randomize_adapter(model)
    model.save_adapter(tmp_path / "trained")
    return model, tmp_path / "trained"


def test_grow_appends_parts_and_clusters_after_every_trained_task():
    grown = grow(make_config(), make_config(clusters=WANTED))
    assert grown.clusters == {**CLUSTERS, "math+1": ["div"], "style": ["formal", "casual"]}
    assert grown.extends == {"math+1": "math"}
    assert grown.tasks[:5] == make_config().tasks  # trained task ids unchanged, new ones after them
    assert grown.user_clusters() == WANTED
    again = grow(grown, make_config(clusters={**WANTED, "math": [*WANTED["math"], "mod"]}))
    assert again.clusters["math+2"] == ["mod"] and again.extends == {"math+1": "math", "math+2": "math"}


@pytest.mark.parametrize(
    ("clusters", "overrides", "message"),
    [
        ({"lexical": ["synonym"], "math": ["add", "mul", "sub", "antonym"]}, {}, "'antonym' is in 'math'"),
        ({"lexical": ["synonym", "opposite"], "math": ["add", "mul", "sub"]}, {}, "'antonym' is gone"),
        ({"lexical": ["antonym", "synonym"], "math": ["add", "mul", "sub"]}, {}, "listed as"),
        ({"math": ["add", "mul", "sub", "div"]}, {}, "'lexical'.*is missing"),
        (WANTED, {"r": 8}, "cgc.r is 8 but the trained adapter has 4"),
        (WANTED, {"num_shared_experts": 1}, "num_shared_experts"),
        (WANTED, {"target_modules": ["q_proj"]}, "target_modules"),
        (CLUSTERS, {}, "adds no task"),
    ],
)
def test_grow_refuses_what_would_touch_a_trained_task(clusters, overrides, message):
    with pytest.raises(AdapterConfigError, match=message):
        grow(make_config(), make_config(clusters=clusters, **overrides))


def test_a_new_cluster_may_not_take_a_grown_part_name():
    grown = grow(make_config(), make_config(clusters=WANTED))
    with pytest.raises(AdapterConfigError, match="'math\\+1' has the name of a grown part"):
        grow(grown, make_config(clusters={**WANTED, "math+1": ["x"]}))


def test_trained_tasks_are_bit_identical_and_only_new_parameters_train(trained, tmp_path):
    model, path = trained
    grown, new = attach_grown(tiny_llama(), path, make_config(clusters=WANTED))
    assert new == ["math+1", "style"]
    randomize_adapter_of(grown, new)  # as if trained: non-zero new experts and gates
    x = batch(batch_size=5)
    old_tasks = ["synonym", "add", "mul", "antonym", "sub"]
    with torch.no_grad():
        for tasks in (old_tasks, ["mul"] * 5, ["antonym"] * 5):
            assert torch.equal(model(input_ids=x, task_ids=tasks).logits, grown(input_ids=x, task_ids=tasks).logits)
    training = {n for n, p in grown.trainable_parameters() if p.requires_grad}
    assert training and all(("math+1" in n.split(".")) or ("style" in n.split(".")) for n in training)
    # a new task of a trained cluster mixes that cluster's shared experts, and no gradient reaches them
    loss = grown(input_ids=x, task_ids=["div", "formal", "div", "casual", "div"]).logits.square().mean()
    loss.backward()
    for name, param in grown.trainable_parameters():
        assert (param.grad is not None) == (name in training), name
    shared_used = grown(input_ids=x[:1], task_ids=["div"]).logits
    with torch.no_grad():
        for layer in grown.adapted_layers().values():
            layer.experts["math"].lora_B[:, : grown.cgc_config.shared_rows()] = 0
    assert not torch.equal(shared_used, grown(input_ids=x[:1], task_ids=["div"]).logits)


def test_exports_of_trained_tasks_are_byte_identical_and_new_ones_exact(trained, tmp_path):
    model, path = trained
    grown, new = attach_grown(tiny_llama(), path, make_config(clusters=WANTED))
    randomize_adapter_of(grown, new)
    for task in model.tasks:
        cgc.export_peft_adapter(model, task, tmp_path / "before" / task)
        cgc.export_peft_adapter(grown, task, tmp_path / "after" / task)
        assert digest(tmp_path / "before" / task) == digest(tmp_path / "after" / task), task
    x = batch(batch_size=2)
    for task in ("div", "formal"):
        merged = cgc.merge_task(grown, task)
        with torch.no_grad():
            want = grown(input_ids=x, task_ids=[task, task]).logits
            torch.testing.assert_close(merged(input_ids=x).logits, want, atol=1e-5, rtol=1e-5)


def test_a_grown_adapter_saves_loads_and_grows_again(trained, tmp_path):
    _, path = trained
    grown, new = attach_grown(tiny_llama(), path, make_config(clusters=WANTED))
    randomize_adapter_of(grown, new)
    grown.save_adapter(tmp_path / "grown")
    loaded = cgc.load_adapter(tiny_llama(), tmp_path / "grown")
    x, tasks = batch(batch_size=4), ["div", "sub", "casual", "div"]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=x, task_ids=tasks).logits, grown(input_ids=x, task_ids=tasks).logits)
    wanted = make_config(clusters={**WANTED, "math": [*WANTED["math"], "mod"]})
    again, new_again = attach_grown(tiny_llama(), tmp_path / "grown", wanted)
    assert new_again == ["math+2"] and again.task_id("mod") == 8
    with torch.no_grad():
        assert torch.equal(again(input_ids=x, task_ids=tasks).logits, grown(input_ids=x, task_ids=tasks).logits)


def randomize_adapter_of(model: cgc.CGCModel, clusters: list[str], seed: int = 5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for cluster in clusters:
            for param in model.cluster_parameters(cluster):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def test_a_config_with_extends_round_trips():
    grown = grow(make_config(), make_config(clusters=WANTED))
    assert cgc.CGCLoraConfig.from_json(grown.to_json()) == grown
    with pytest.raises(AdapterConfigError, match="extend an earlier cluster"):
        dataclasses.replace(grown, extends={"math": "math+1"})


def test_an_unchanged_export_is_not_rewritten(trained, tmp_path):
    model, path = trained
    grown, new = attach_grown(tiny_llama(), path, make_config(clusters=WANTED))
    cgc.export_peft_adapter(model, "add", tmp_path / "add")
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "add").iterdir()}
    cgc.export_peft_adapter(grown, "add", tmp_path / "add")  # the same task of the grown adapter: the same bytes
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (tmp_path / "add").iterdir()} == before
    randomize_adapter(grown)  # a changed task's export replaces its files
    cgc.export_peft_adapter(grown, "add", tmp_path / "add")
    assert {p.name: p.stat().st_ino for p in (tmp_path / "add").iterdir()} != {k: v[0] for k, v in before.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["add", "trained"]  # no temporary directory left


def test_a_grown_config_fed_back_grows_the_same_and_keeps_its_order():
    wanted = make_config(
        clusters={"lexical": ["synonym", "antonym"], "style": ["formal"], "math": [*CLUSTERS["math"], "div"]}
    )
    grown = grow(make_config(), wanted)
    assert list(grown.clusters) == ["lexical", "math", "style", "math+1"]  # new entries in the order written
    again = grow(make_config(), grown)  # e.g. the run's own config.yaml on resume
    assert again == grown and again.tasks == grown.tasks and list(again.clusters) == list(grown.clusters)


def test_equal_shapes_written_differently_grow_and_impossible_parts_are_refused():
    written = make_config(clusters=WANTED, r_shared=4, target_modules=["down_proj", "v_proj", "q_proj"])
    assert grow(make_config(), written).clusters["math+1"] == ["div"]
    for shape, message in (
        ({"num_task_experts": 0}, "no expert to train"),
        ({"num_shared_experts": 0}, "nothing to share"),
    ):
        with pytest.raises(AdapterConfigError, match=message):
            grow(make_config(**shape), make_config(clusters=WANTED, **shape))
    only_new_cluster = {**CLUSTERS, "style": ["formal"]}  # a new cluster needs no shared experts of a trained one
    assert grow(make_config(num_shared_experts=0), make_config(clusters=only_new_cluster, num_shared_experts=0))


def test_cluster_parameters_are_exactly_the_clusters_own_even_named_like_a_module():
    model = cgc.attach(tiny_llama(), make_config(clusters={"mlp": ["a"], "layers": ["b", "c"]}))
    counts = {c: len(model.cluster_parameters(c)) for c in ("mlp", "layers")}
    assert counts == {"mlp": 2 * 3 * 2 + 1, "layers": 2 * 3 * 2 + 1}  # A and B on 3 modules x 2 layers, one gate


def test_extend_shared_trains_the_shared_experts_only_and_leaves_other_clusters_exact(trained, tmp_path):
    """train.extend_shared: math's shared experts train with the appended `div` and replay of math's own tasks;
    math's own experts and gates, and every other cluster, stay bit-identical (weight decay on, to catch a decay of
    the detached rows). Fails if the own-expert rows are not detached or math's gate trains."""
    from cgc.adapter.growth import extended_clusters, load_trained, tasks_sharing

    model, path = trained
    grown = cgc.attach(tiny_llama(), grow(make_config(), make_config(clusters=WANTED)))
    load_trained(grown, path, extend_shared=True)
    assert extended_clusters(make_config(), grown.cgc_config) == ["math"]
    assert tasks_sharing(grown.cgc_config, "math") == ["add", "mul", "sub", "div"]
    before = {n: p.detach().clone() for n, p in grown.trainable_parameters()}
    groups = grown.optimizer_groups(lr=1e-2, gate_lr=1e-1, weight_decay=0.1)
    assert [g["name"] for g in groups] == ["experts", "extended_shared", "gates"]
    optimizer = torch.optim.AdamW(groups)
    x, tasks = batch(batch_size=6), ["div", "add", "formal", "mul", "div", "synonym"]
    for _ in range(3):
        optimizer.zero_grad()
        grown(input_ids=x, task_ids=tasks).logits.square().mean().backward()
        optimizer.step()
    rows = grown.cgc_config.shared_rows()
    for name, param in grown.trainable_parameters():
        was = before[name]
        if ".experts.math." in name:  # math's stacked experts: shared rows first
            own = (slice(rows, None),) if name.endswith("lora_A") else (slice(None), slice(rows, None))
            shared = (slice(None, rows),) if name.endswith("lora_A") else (slice(None), slice(None, rows))
            assert torch.equal(param[own], was[own]), name
            assert not torch.equal(param[shared], was[shared]), name
        elif name.split(".")[-2] in ("math+1", "style") or name.startswith(("gates.math+1", "gates.style")):
            assert not torch.equal(param, was), name
        else:
            assert torch.equal(param, was), name
    with torch.no_grad():  # lexical's tasks compute what they did; math's old tasks changed
        for task, same in (("synonym", True), ("antonym", True), ("add", False)):
            out = (model(input_ids=x, task_ids=[task] * 6).logits, grown(input_ids=x, task_ids=[task] * 6).logits)
            assert torch.equal(*out) == same, task


def test_a_grown_config_counts_only_the_experts_it_stores():
    """An extension stores its tasks' own experts only: the counts a comparison reports match the tensors."""
    from cgc.adapter.presets import method_shape

    grown = grow(make_config(), make_config(clusters=WANTED))
    model = cgc.attach(tiny_llama(), grown)
    layer = next(iter(model.adapted_layers().values()))
    shape = method_shape(grown)
    assert shape["total_rank"] == sum(e.lora_A.shape[0] for e in layer.experts.values())
    S = grown.num_shared_experts  # an extension's stack starts after the shared experts it does not store
    assert shape["experts_per_layer"] == sum(e.num_experts - (S if e.offset else 0) for e in layer.experts.values())
