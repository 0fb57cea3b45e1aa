"""The optimizer holds only what can train: the clusters with training data. A cluster without data gets no
gradient in any step; left in a ZeRO optimizer it would still be updated (zero gradients, DeepSpeed's
`_get_gradients_for_reduction`), and its A matrices would shrink under weight decay for nothing."""

from types import SimpleNamespace

import torch

import cgc
from cgc.models.tiny import tiny_model
from cgc.training.optimizer import optimizer_and_schedule

CLUSTERS = {"words": ["a", "b"], "numbers": ["c", "d"], "letters": ["e"]}
TRAIN = SimpleNamespace(lr=1e-2, gate_lr=1e-2, weight_decay=0.5, schedule="constant", warmup_steps=0, max_steps=4)


def model() -> cgc.CGCModel:
    config = cgc.CGCLoraConfig(
        clusters=CLUSTERS, r=2, num_shared_experts=1, num_task_experts=1, target_modules=["q_proj", "v_proj"]
    )
    return cgc.attach(tiny_model(num_layers=2), config)


def optimized(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_the_optimizer_holds_exactly_the_clusters_with_data():
    cgc_model = model()
    optimizer, _, _ = optimizer_and_schedule(cgc_model, TRAIN, {"zero_optimization": {}}, ["words", "numbers"])
    wanted = {id(p) for c in ("words", "numbers") for p in cgc_model.cluster_parameters(c)}
    assert optimized(optimizer) == wanted
    assert not any(p.requires_grad for p in cgc_model.cluster_parameters("letters"))
    assert all(p.requires_grad for p in cgc_model.cluster_parameters("words"))


def test_without_a_list_every_cluster_trains():
    cgc_model = model()
    optimizer, _, _ = optimizer_and_schedule(cgc_model, TRAIN, {"zero_optimization": {}})
    assert optimized(optimizer) == {id(p) for _, p in cgc_model.trainable_parameters()}


def test_a_cluster_without_data_is_left_as_initialised_under_weight_decay():
    cgc_model = model()
    before = {n: p.detach().clone() for n, p in cgc_model.trainable_parameters()}
    optimizer, scheduler, _ = optimizer_and_schedule(cgc_model, TRAIN, {"zero_optimization": {}}, ["words", "numbers"])
    ids = torch.tensor([cgc_model.task_id("a"), cgc_model.task_id("b")])
    for _ in range(TRAIN.max_steps):
        out = cgc_model(input_ids=torch.randint(0, 50, (2, 6)), task_ids=ids)
        out.logits.square().mean().backward()
        # as DeepSpeed's engine does before it reduces: zeros for every optimized parameter without a gradient
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    after = dict(cgc_model.trainable_parameters())
    letters = [n for n in before if "letters" in n.split(".")]
    numbers_a = [n for n in before if "numbers" in n.split(".") and n.endswith("lora_A")]
    assert letters and all(torch.equal(before[n], after[n]) for n in letters)
    # the control: numbers had no example in these steps either, but it has data, so weight decay moves it
    assert numbers_a and all(not torch.equal(before[n], after[n]) for n in numbers_a)
