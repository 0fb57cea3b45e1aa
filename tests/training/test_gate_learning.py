"""The gate learns, with the recipe's optimizer and schedule: where the best mixture is known, a task's gate moves
toward it within a bounded number of steps, and it does not when the gate is frozen. The gates' learning rate
is their own and constant from the first step (cgc.training.optimizer)."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cgc
from cgc.training.optimizer import optimizer_and_schedule

D = 32
TRAIN = {"lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine", "warmup_steps": 5, "max_steps": 40}


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(D, D, bias=False)

    def forward(self, x):
        return self.q_proj(x)


def low_rank(generator, rank: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (D, rank), A (rank, D)) of a random rank-`rank` change of unit-ish size."""
    return torch.randn(D, rank, generator=generator) / math.sqrt(D), torch.randn(rank, D, generator=generator)


def trained_start(gate_init: str = "uniform"):
    """Cluster {hurt, helped}, one shared and one own expert each. At the start the shared expert puts out
    `common` (at `hurt`'s weight on it), which task `hurt` does not want and task `helped` wants twice over;
    `hurt`'s own expert puts out what `hurt` wants. Best mixture: `hurt` off the shared expert, onto its own;
    `helped` onto the shared one (its own expert is still zero)."""
    config = cgc.CGCLoraConfig(
        clusters={"c": ["hurt", "helped"]}, r=2, num_shared_experts=1, num_task_experts=1,
        target_modules=["q_proj"], gate_init=gate_init,
    )  # fmt: skip
    torch.manual_seed(0)
    model = cgc.attach(OneLayer(), config)
    experts = model.adapted_layers()["q_proj"].experts["c"]
    g = torch.Generator().manual_seed(1)
    common, own = low_rank(g), low_rank(g)
    weights = model.gates["c"].weights()[0, 0].tolist()  # task `hurt`'s weight on the shared and its own expert
    with torch.no_grad():
        for k, (b, a) in ((0, common), (1, own)):  # expert 0: shared; expert 1: the own expert of `hurt`
            rows = experts.expert_rows(k)
            experts.lora_A[rows], experts.lora_B[:, rows] = a, b / weights[k]  # its output: exactly the change
    truth = {"hurt": own[0] @ own[1], "helped": 2 * common[0] @ common[1]}
    return model, truth


def own_share(model: cgc.CGCModel, task: str) -> float:
    return float(model.gate(task)["q_proj"][1])


def train(model: cgc.CGCModel, truth: dict, gate_lr: float, steps: int = 40) -> None:
    optimizer, scheduler, _ = optimizer_and_schedule(
        model, SimpleNamespace(**TRAIN, gate_lr=gate_lr), {"zero_optimization": {}}
    )
    g = torch.Generator().manual_seed(2)
    ids = torch.tensor([model.task_id("hurt"), model.task_id("helped")] * 8)
    for _ in range(steps):
        x = torch.randn(16, 4, D, generator=g)  # (B, L, D)
        y = torch.stack([x[i] @ truth[model.task_map.name_of(int(t))].T for i, t in enumerate(ids)])
        frozen = model.adapted_layers()["q_proj"].base_layer(x)  # W0 x
        ((model(x, task_ids=ids) - frozen - y) ** 2).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("gate_init", ["uniform", "own"])
def test_the_gate_moves_toward_the_known_best_mixture_within_40_steps(gate_init):
    model, truth = trained_start(gate_init)
    hurt_before, helped_before = own_share(model, "hurt"), own_share(model, "helped")
    train(model, truth, gate_lr=5e-2)
    assert own_share(model, "hurt") > hurt_before + 0.2  # away from the shared expert that hurts it
    assert own_share(model, "helped") < helped_before - 0.2  # toward the shared expert that serves it


def test_a_frozen_gate_does_not_move():
    """The control: the same run with the gate's learning rate at zero keeps the start's mixture."""
    model, truth = trained_start()
    train(model, truth, gate_lr=0.0)
    assert own_share(model, "hurt") == pytest.approx(0.5) and own_share(model, "helped") == pytest.approx(0.5)


def test_the_gates_learning_rate_is_constant_from_the_first_step():
    model, _ = trained_start()
    optimizer, scheduler, names = optimizer_and_schedule(
        model, SimpleNamespace(**TRAIN, gate_lr=5e-2), {"zero_optimization": {}}
    )
    seen = []
    for _ in range(TRAIN["max_steps"]):
        seen.append(dict(zip(names, scheduler.get_last_lr(), strict=True)))
        optimizer.step()
        scheduler.step()
    assert all(lrs["gates"] == 5e-2 for lrs in seen)  # no warmup, no decay
    assert seen[0]["experts"] == 0 and max(lrs["experts"] for lrs in seen) == pytest.approx(1e-3)  # warmup, cosine
    assert seen[-1]["experts"] < 1e-4
