"""CGCModel: input validation, generation, gradient checkpointing, save/load."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

import cgc
from cgc.adapter.gates import start_own_share
from tests.conftest import batch, make_config, randomize_adapter, tiny_llama


def test_task_ids_accept_names_and_ids(cgc_model):
    x = batch(batch_size=3)
    with torch.no_grad():
        by_name = cgc_model(input_ids=x, task_ids=["mul", "synonym", "sub"]).logits
        by_id = cgc_model(input_ids=x, task_ids=torch.tensor([3, 0, 4])).logits
    assert torch.equal(by_name, by_id)
    assert cgc_model.task_id("antonym") == 1


def test_bad_task_inputs_raise_value_error_naming_them(cgc_model):
    x = batch(batch_size=2)
    with pytest.raises(ValueError, match="unknown task 'division'.*known tasks"):
        cgc_model(input_ids=x, task_ids=["add", "division"])
    with pytest.raises(ValueError, match="task id 5 out of range"):
        cgc_model(input_ids=x, task_ids=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="task id -1 out of range"):
        cgc_model(input_ids=x, task_ids=torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="task_ids has 3 entries but the batch has 2"):
        cgc_model(input_ids=x, task_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="task_ids is required"):
        cgc_model(input_ids=x)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        cgc_model.gate("nope")


def test_target_modules_matching_nothing_lists_existing_modules():
    with pytest.raises(ValueError) as err:
        cgc.attach(tiny_llama(), make_config(target_modules=["query"]))
    assert "matched no module" in str(err.value) and "q_proj" in str(err.value)


def test_target_modules_regex_and_non_linear_target():
    model = cgc.attach(tiny_llama(), make_config(target_modules=r"model\.layers\.1\.self_attn\.(q|k)_proj"))
    assert sorted(model.adapted_layers()) == ["model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.q_proj"]
    with pytest.raises(ValueError, match="'model.layers.0.input_layernorm' is a LlamaRMSNorm"):
        cgc.attach(tiny_llama(), make_config(target_modules=["input_layernorm"]))


def test_base_is_frozen_and_attach_twice_is_refused():
    model = cgc.attach(tiny_llama(), make_config())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # the experts by their name in the base model; the gates, which live beside it, by theirs
    names = {n if n.startswith("gates.") else "base_model." + n for n, _ in model.trainable_parameters()}
    assert trainable == names and any(n.startswith("gates.") for n in names)
    assert all(".experts." in n or n.startswith("gates.") for n in trainable)  # nothing of the base trains
    with pytest.raises(ValueError, match="already has CGC-LoRA layers"):
        cgc.attach(model.base_model, make_config())


def test_every_parameter_name_has_its_cluster_as_a_component(cgc_model):
    for name, _ in cgc_model.trainable_parameters():
        assert len({"lexical", "math"} & set(name.split("."))) == 1, name
    math = cgc_model.cluster_parameters("math")
    assert math and len(math) + len(cgc_model.cluster_parameters("lexical")) == len(
        list(cgc_model.trainable_parameters())
    )


def test_running_the_base_model_without_task_ids_is_a_clear_error():
    model = cgc.attach(tiny_llama(), make_config())
    with pytest.raises(RuntimeError, match="ran without task ids"):
        model.base_model(input_ids=batch())


def _greedy_without_cache(model, x, tasks, steps):
    for _ in range(steps):
        logits = model(input_ids=x, task_ids=tasks, use_cache=False).logits
        x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


def test_generate_with_kv_cache_matches_full_recompute(cgc_model):
    x = batch(batch_size=3, length=6)
    tasks = ["synonym", "mul", "add"]
    with torch.no_grad():
        generated = cgc_model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            task_ids=tasks,
            max_new_tokens=5,
            do_sample=False,
            min_new_tokens=5,
        )
        expected = _greedy_without_cache(cgc_model, x, tasks, 5)
    assert torch.equal(generated, expected)


def test_generate_with_beams_routes_each_beam_to_its_sample(cgc_model):
    x = batch(batch_size=2, length=6)
    kwargs = dict(
        attention_mask=torch.ones_like(x[:1]), max_new_tokens=4, min_new_tokens=4, num_beams=3, do_sample=False
    )
    with torch.no_grad():
        together = cgc_model.generate(
            input_ids=x, task_ids=["antonym", "sub"], **kwargs | {"attention_mask": torch.ones_like(x)}
        )
        first = cgc_model.generate(input_ids=x[:1], task_ids=["antonym"], **kwargs)
        second = cgc_model.generate(input_ids=x[1:], task_ids=["sub"], **kwargs)
    assert torch.equal(together, torch.cat([first, second]))


def _loss_and_grads(model, x, tasks):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=x, labels=x, task_ids=tasks).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.trainable_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    x, tasks = batch(batch_size=4), ["synonym", "add", "mul", "antonym"]
    plain = cgc.attach(tiny_llama(), make_config())
    randomize_adapter(plain)
    plain.train()
    expected_loss, expected = _loss_and_grads(plain, x, tasks)

    ckpt = cgc.attach(tiny_llama(), make_config())
    randomize_adapter(ckpt)
    ckpt.gradient_checkpointing_enable()
    ckpt.train()
    assert ckpt.base_model.model.gradient_checkpointing
    loss, grads = _loss_and_grads(ckpt, x, tasks)
    torch.testing.assert_close(loss, expected_loss)
    assert grads.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpoint_recompute_uses_its_own_forwards_routing():
    # Two forwards, then both backwards: recomputation must not use the routing of the later forward.
    x = batch(batch_size=2)
    model = cgc.attach(tiny_llama(), make_config())
    randomize_adapter(model)
    model.train()
    _, expected = _loss_and_grads(model, x, ["synonym", "synonym"])
    model.gradient_checkpointing_enable()
    model.zero_grad(set_to_none=True)
    first = model(input_ids=x, labels=x, task_ids=["synonym", "synonym"]).loss
    second = model(input_ids=x, labels=x, task_ids=["add", "mul"]).loss
    first.backward()
    got = {n: p.grad.clone() for n, p in model.trainable_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)
    second.backward()


def test_save_and_load_adapter_round_trip(cgc_model, base_factory, tmp_path):
    x = batch()
    tasks = ["synonym", "add", "antonym", "sub", "mul"]
    with torch.no_grad():
        expected = cgc_model(input_ids=x, task_ids=tasks).logits
    cgc_model.save_adapter(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(saved) == {n for n, _ in cgc_model.trainable_parameters()}
    base_names = {n for n, _ in cgc_model.base_model.named_parameters() if "experts" not in n}
    assert not set(saved) & base_names

    loaded = cgc.load_adapter(base_factory(), tmp_path)
    assert loaded.cgc_config == cgc_model.cgc_config
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        got = loaded(input_ids=x, task_ids=tasks).logits
    assert torch.equal(got, expected)
    trainable = cgc.load_adapter(base_factory(), tmp_path, is_trainable=True)
    assert all(p.requires_grad for _, p in trainable.trainable_parameters())


def test_load_adapter_into_a_different_model_is_refused(cgc_model, tmp_path):
    cgc_model.save_adapter(tmp_path)
    cfg = cgc.CGCLoraConfig.load(tmp_path)
    dataclasses.replace(cfg, clusters={"lexical": ["synonym", "antonym"], "math": ["add", "mul"]}).save(tmp_path)
    with pytest.raises(ValueError, match="does not fit this base model"):
        cgc.load_adapter(tiny_llama(), tmp_path)
    with pytest.raises(FileNotFoundError, match="cgc_config.json"):
        cgc.load_adapter(tiny_llama(), tmp_path / "missing")


def test_optimizer_groups_split_experts_and_gates():
    model = cgc.attach(tiny_llama(), make_config())
    experts, gates = model.optimizer_groups(lr=1e-3, gate_lr=1e-2, weight_decay=0.1)
    assert (experts["lr"], experts["weight_decay"], gates["lr"], gates["weight_decay"]) == (1e-3, 0.1, 1e-2, 0.0)
    names = {id(p): n for n, p in model.trainable_parameters()}
    assert all(not names[id(p)].endswith("gate_logits") for p in experts["params"])
    assert all(names[id(p)].endswith("gate_logits") for p in gates["params"])
    assert len(experts["params"]) + len(gates["params"]) == len(names)
    no_gate = cgc.attach(tiny_llama(), cgc.presets.per_task_lora(["a", "b"], r=2, target_modules=["q_proj"]))
    assert len(no_gate.optimizer_groups(1e-3, 1e-2)) == 1


@pytest.mark.parametrize("gate_init, expected", [("uniform", 1 / 3), ("own", 0.5761), ("random", None)])
def test_the_start_share_the_report_names_is_the_gate_the_model_starts_with(gate_init, expected):
    config = make_config(gate_init=gate_init)
    start = start_own_share(config)
    assert start == (None if expected is None else pytest.approx(expected, abs=1e-4))
    if start is not None:
        model = cgc.attach(tiny_llama(), config)
        own = [float(g[2:].sum()) for task in model.tasks for g in model.gate(task).values()]  # S = 2 shared first
        assert own == pytest.approx([start] * len(own))
