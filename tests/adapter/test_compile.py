"""CGCModel.compile: the base with its CGC-LoRA layers under torch.compile, routing eager, the eager model's
losses and gradients for every kind of routing, and nothing new in the state."""

import torch

import cgc
from cgc.models.tiny import tiny_model

CLUSTERS = {"w": ["a", "b"], "n": ["c", "d"]}


def model() -> cgc.CGCModel:
    config = cgc.CGCLoraConfig(
        clusters=CLUSTERS, r=2, num_shared_experts=1, num_task_experts=1, target_modules=["q_proj", "down_proj"]
    )
    m = cgc.attach(tiny_model(num_layers=1, hidden_size=32), config)
    m.gradient_checkpointing_enable()
    m.train()
    with torch.no_grad():  # B away from zero and gates away from uniform: every routing changes the output
        for _, p in m.trainable_parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    return m


def loss_and_grads(m: cgc.CGCModel, ids: torch.Tensor, tasks: list[str]):
    loss = m(input_ids=ids, task_ids=tasks, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.trainable_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_compiled_forward_and_backward_match_eager_for_each_routing():
    eager, compiled = model(), model()
    keys = set(compiled.state_dict())
    compiled.compile()
    assert compiled.is_compiled and not eager.is_compiled
    assert set(compiled.state_dict()) == keys  # the compiled base is not a submodule
    ids = torch.randint(3, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    # a mix of clusters, one cluster with two tasks, one task (the single-task path), and the first again
    for tasks in (["a", "c"], ["c", "d"], ["b", "b"], ["a", "c"]):
        (want, want_grads), (got, got_grads) = loss_and_grads(eager, ids, tasks), loss_and_grads(compiled, ids, tasks)
        assert abs(want - got) <= 1e-5, (tasks, want, got)
        assert want_grads.keys() == got_grads.keys()
        for name, grad in want_grads.items():
            torch.testing.assert_close(got_grads[name], grad, atol=1e-5, rtol=1e-4, msg=f"{tasks} {name}")
