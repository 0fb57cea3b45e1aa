"""Equal footing: at the same learning rate, the first AdamW step of every method of the comparison changes a
layer's output by about the same amount. Adam moves every entry of B by about lr whatever the weight in front of
it, so what decides the output change is how a method weighs its experts and how many rank rows a task has: under
the "rslora" rule (expert weight alpha / sqrt(task rank) at a uniform gate) the four methods at the demo's matched
budget land within 1.3x of each other; under the old rule (alpha = 2r per expert, a gate summing to 1) they were
8x apart (docs/experiments.md, 2026-12-02)."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import cgc
from cgc.adapter.gates import OWN_BIAS
from cgc.adapter.presets import matched_budget
from tests.conftest import ROOT

CLUSTERS = json.loads((ROOT / "recipes/data/demo/clusters.json").read_text())  # 3 clusters x 3 tasks


class OneLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.q_proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.q_proj(x)


def one_step(model, ids: torch.Tensor, lr: float = 1e-3, d: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """One AdamW step of `model` on a random batch (8, 16, d) of the tasks `ids` => (the batch, the output before)."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 16, d, generator=generator), torch.randn(8, 16, d, generator=generator)
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=lr, weight_decay=0.0)
    with torch.no_grad():
        before = model(x, task_ids=ids)
    ((model(x, task_ids=ids) - y) ** 2).mean().backward()
    optimizer.step()
    return x, before


def first_step_change(config: cgc.CGCLoraConfig, lr: float = 1e-3, d: int = 256) -> float:
    """|Δh| / |h| of one AdamW step on a batch of one cluster (as the sampler gives it), random data."""
    torch.manual_seed(0)
    model = cgc.attach(OneLayer(d, d), config)
    tasks = config.task_map.tasks_of(next(iter(config.clusters)))
    ids = torch.tensor([model.task_id(tasks[i % len(tasks)]) for i in range(8)])
    x, before = one_step(model, ids, lr, d)
    with torch.no_grad():
        return float((model(x, task_ids=ids) - before).norm() / before.norm())


def changes(methods: dict[str, cgc.CGCLoraConfig]) -> dict[str, float]:
    return {name: first_step_change(config) for name, config in methods.items()}


@pytest.mark.parametrize("budget", [60, 120])
def test_every_method_takes_a_first_step_of_about_the_same_size(budget):
    methods = matched_budget(CLUSTERS, budget, target_modules=["q_proj"])
    measured = changes(methods)
    assert max(measured.values()) / min(measured.values()) <= 1.5, measured
    assert min(measured.values()) > 1e-3  # a real step (the mutation below shrinks nothing to zero)


def test_without_the_equal_scaling_the_steps_are_far_apart():
    """The mutation the rule guards against: the old rule (alpha = 2r, scaling alpha / r, gate summing to 1)."""
    methods = matched_budget(CLUSTERS, 120, target_modules=["q_proj"])
    old = {n: dataclasses.replace(c, scaling="lora", alpha=2.0 * c.r) for n, c in methods.items()}
    measured = changes(old)
    assert max(measured.values()) / min(measured.values()) > 4, measured


def test_moelora_at_a_uniform_gate_is_the_shared_lora_of_its_total_rank():
    """Same rank, same weights at the start: MOELoRA differs from one shared LoRA only by what its gate learns."""
    methods = matched_budget(CLUSTERS, 120, target_modules=["q_proj"])
    moe, shared = methods["moelora"], methods["shared_lora"]
    assert moe.exported_rank == shared.exported_rank == 120
    assert first_step_change(moe) == pytest.approx(first_step_change(shared), rel=1e-6)


def expert_steps(gate_init: str, d: int = 256) -> list[float]:
    """|Δh_k| / |h| of each expert k (shared first, then the task's own) after one AdamW step on a batch of one task
    of a one-cluster CGC-LoRA (S=2, K=1, r=8); B starts at zero, so B after the step is the step."""
    config = cgc.CGCLoraConfig(
        clusters={"all": ["a", "b", "c"]}, r=8, num_shared_experts=2, num_task_experts=1,
        target_modules=["q_proj"], gate_init=gate_init,
    )  # fmt: skip
    torch.manual_seed(0)
    model = cgc.attach(OneLayer(d, d), config)
    ids = torch.full((8,), model.task_id("a"))
    x, h = one_step(model, ids, d=d)
    experts = next(iter(model.adapted_layers().values())).experts["all"]
    scales = model.task_scales("a")[0].detach()  # (R,): task a's weight on its experts' rank rows
    rows = experts.active_rows[0]  # (R,): those rows in the cluster's stack
    steps = []
    for k in range(config.num_shared_experts + config.num_task_experts):
        expert = slice(k * config.r, (k + 1) * config.r)  # expert k's rows among the task's R
        a, b = experts.lora_A[rows[expert]].detach(), experts.lora_B[:, rows[expert]].detach()
        steps.append(((x @ a.T) * scales[expert]) @ b.T)
    with torch.no_grad():  # the experts' parts add up to what the forward's output moved
        torch.testing.assert_close(sum(steps), model(x, task_ids=ids) - h, rtol=1e-4, atol=1e-6)
    return [float(delta.norm() / h.norm()) for delta in steps]


def test_the_gate_start_sets_each_experts_step():
    """Adam moves every entry of B by about lr whatever weight stands before it, so an expert's output step is its
    weight's share: from the own-biased start the task's own expert steps ~e (exp OWN_BIAS) times as far as each
    shared one, from a uniform start as far. The start chooses which experts learn first, not only the mixture."""
    shared_a, shared_b, own = expert_steps("own")
    ratio = own / ((shared_a + shared_b) / 2)
    assert math.exp(OWN_BIAS) / 1.3 < ratio < math.exp(OWN_BIAS) * 1.3, (shared_a, shared_b, own)
    shared_a, shared_b, own = expert_steps("uniform")
    assert 1 / 1.3 < own / ((shared_a + shared_b) / 2) < 1.3, (shared_a, shared_b, own)
