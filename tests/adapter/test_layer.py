"""The CGC-LoRA layer against its formula, h = W0 x + (alpha/r) Σ_k g_{t,k} B_k A_k x over the task's shared and own
experts (README, top), written here independently as a loop over experts."""

import pytest
import torch
import torch.nn.functional as F

import cgc
from tests.conftest import batch, make_config, randomize_adapter, tiny_llama


def expert_pair(experts: cgc.ClusterExperts, config: cgc.CGCLoraConfig, k: int):
    """A_k (r_k, d_in), B_k (d_out, r_k): the S shared experts are the first rows (r_shared each), then the K
    experts of each task in task order (r_task each)."""
    S = config.num_shared_experts
    r_shared, r_task = config.r_shared or config.r, config.r_task or config.r
    start, rank = (k * r_shared, r_shared) if k < S else (S * r_shared + (k - S) * r_task, r_task)
    return experts.lora_A[start : start + rank], experts.lora_B[:, start : start + rank]


def expert_weight(config: cgc.CGCLoraConfig, g: torch.Tensor, slot: int) -> torch.Tensor:
    """w_{t,k}: "rslora", alpha * (S+K) / sqrt(S*r_shared + K*r_task) * g_k (every expert alpha / sqrt(R) at a
    uniform gate); "lora", alpha / r_k * g_k."""
    S, K = config.num_shared_experts, config.num_task_experts
    r_shared, r_task = config.r_shared or config.r, config.r_task or config.r
    if config.scaling == "lora":
        return config.alpha / (r_shared if slot < S else r_task) * g[slot]
    return config.alpha * (S + K) / (S * r_shared + K * r_task) ** 0.5 * g[slot]


def reference_layer_output(model: cgc.CGCModel, layer: cgc.CGCLinear, x: torch.Tensor, tasks: list[str]):
    """h = W0 x + Σ_{k ∈ S_c ∪ P_t} w_{t,k} B_k A_k x, one sample and one expert at a time; the gate logits of
    task t on this layer are row t of the cluster's gates at the layer's index."""
    config = model.cgc_config
    S, K = config.num_shared_experts, config.num_task_experts
    rows = []
    for b, task in enumerate(tasks):
        # Looked up here from the cluster map itself, independently of cgc's TaskMap.
        cluster = next(c for c, members in config.clusters.items() if task in members)
        j = config.clusters[cluster].index(task)
        experts, stacked = layer.experts[cluster], model.gates[cluster].gate_logits  # (L, T_c, S+K) or None
        logits = stacked[layer.layer_index, j] if stacked is not None else torch.zeros(S + K)
        g = torch.softmax(logits, dim=-1)
        expert_ids = list(range(S)) + [S + j * K + k for k in range(K)]
        h = F.linear(x[b], layer.base_layer.weight, layer.base_layer.bias)
        for slot, e in enumerate(expert_ids):
            a, b_k = expert_pair(experts, config, e)
            h = h + expert_weight(config, g, slot) * (x[b] @ a.T @ b_k.T)
        rows.append(h)
    return torch.stack(rows)


def capture(layer):
    seen = {}

    def hook(module, args, output):
        seen["x"], seen["out"] = args[0].detach(), output.detach()

    return seen, layer.register_forward_hook(hook)


def test_zero_B_equals_base_model(base_factory):
    base = base_factory()
    x = batch()
    with torch.no_grad():
        expected = base(input_ids=x).logits
    model = cgc.attach(base_factory(), make_config())  # fresh init: A random, B zero
    assert any(p.abs().sum() > 0 for n, p in model.trainable_parameters() if n.endswith("lora_A"))
    with torch.no_grad():
        got = model(input_ids=x, task_ids=[0, 2, 4, 1, 3]).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "tasks",
    [
        ["synonym", "add", "antonym", "sub", "add"],  # both clusters, several tasks in each: gather path
        ["add", "synonym", "add", "synonym", "add"],  # both clusters, one task in each: shared-weight path
        ["mul", "mul", "mul", "mul", "mul"],  # the whole batch is one task of one cluster
        ["sub", "add", "mul", "add", "sub"],  # the whole batch is one cluster, mixed tasks
    ],
)
@pytest.mark.parametrize("experts", [(2, 1), (1, 2)], ids=["S2K1", "S1K2"])  # S1K2: 'math' takes the gather path
@pytest.mark.parametrize(
    "shape", [{}, {"scaling": "lora"}, {"r_shared": 6, "r_task": 2}], ids=["rslora", "lora", "ranks6-2"]
)
def test_layer_matches_loop_reference(base_factory, experts, tasks, shape):
    S, K = experts
    cgc_model = cgc.attach(base_factory(), make_config(num_shared_experts=S, num_task_experts=K, **shape))
    randomize_adapter(cgc_model)
    for name, layer in cgc_model.adapted_layers().items():
        seen, handle = capture(layer)
        with torch.no_grad():
            cgc_model(input_ids=batch(), task_ids=tasks)
        handle.remove()
        with torch.no_grad():
            expected = reference_layer_output(cgc_model, layer, seen["x"], tasks)
        torch.testing.assert_close(seen["out"], expected, atol=1e-5, rtol=1e-5, msg=name)
        assert (expected - F.linear(seen["x"], layer.base_layer.weight)).abs().max() > 1e-2  # delta is not trivial


def test_single_task_path_matches_mixed_path(cgc_model):
    # A batch of one task takes the shared-weight path; the same rows inside a mixed batch take the gather path.
    x = batch(batch_size=4)
    with torch.no_grad():
        alone = cgc_model(input_ids=x[:2], task_ids=["mul", "mul"]).logits
        mixed = cgc_model(input_ids=x, task_ids=["mul", "mul", "synonym", "add"]).logits
    torch.testing.assert_close(alone, mixed[:2], atol=1e-5, rtol=1e-5)


def test_every_cluster_mode_gives_the_same_output(cgc_model):
    # Evaluation under ZeRO-3 calls every cluster's submodule, an empty slice included.
    x = batch(batch_size=3)
    calls = []
    layer = next(iter(cgc_model.adapted_layers().values()))
    hooks = [
        m.register_forward_hook(lambda mod, a, o, c=c: calls.append((c, a[0].shape[0])))
        for c, m in layer.experts.items()
    ]
    with torch.no_grad():
        plain = cgc_model(input_ids=x, task_ids=["add", "add", "mul"]).logits
        assert calls == [("math", 3)]
        calls.clear()
        every = cgc_model(input_ids=x, task_ids=["add", "add", "mul"], every_cluster=True).logits
        assert calls == [("lexical", 0), ("math", 3)]
    for h in hooks:
        h.remove()
    torch.testing.assert_close(plain, every, atol=0, rtol=0)


def test_gates_sum_to_one_and_start_uniform_when_asked():
    model = cgc.attach(tiny_llama(), make_config(gate_init="uniform"))  # the default, "own": test_model.py
    for task in model.tasks:
        gates = model.gate(task)
        assert len(gates) == len(model.adapted_layers())
        for g in gates.values():
            assert g.shape == (3,)
            torch.testing.assert_close(g, torch.full((3,), 1 / 3))
    randomize_adapter(model)
    for task in model.tasks:
        for g in model.gate(task).values():
            assert abs(float(g.sum()) - 1) < 1e-6 and g.std() > 0


def _grads_of_sample(model, x, tasks, sample):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=x, task_ids=tasks).logits  # (B, T, V)
    loss = F.cross_entropy(logits[sample, :-1], x[sample, 1:])
    loss.backward()
    return {n: p.grad for n, p in model.trainable_parameters()}


@pytest.mark.parametrize(
    "experts, task, batches",
    [
        ((2, 1), "antonym", (["antonym", "add", "synonym", "mul"], ["antonym"] * 4)),
        ((1, 2), "mul", (["mul", "add", "synonym", "sub"], ["mul"] * 4, ["mul", "mul", "add", "antonym"])),
    ],
    ids=["S2K1-dense", "S1K2-gather"],
)
def test_sample_gradients_never_reach_other_clusters_or_other_tasks(base_factory, experts, task, batches):
    S, K = experts
    model = cgc.attach(base_factory(), make_config(num_shared_experts=S, num_task_experts=K))
    randomize_adapter(model)
    config = model.cgc_config
    place = model.task_map.place(task)
    cluster, j = place.cluster, place.local_index
    x = batch(batch_size=4)
    for tasks in batches:
        grads = _grads_of_sample(model, x, tasks, sample=0)  # sample 0 is always `task`
        for name, grad in grads.items():
            if f".{cluster}." not in name:  # another cluster's experts or gates
                assert grad is None or torch.count_nonzero(grad) == 0, name
                continue
            if name.endswith("gate_logits"):  # (L, T_c, S+K): only this task's rows, on every layer
                for other in range(len(config.clusters[cluster])):
                    assert (torch.count_nonzero(grad[:, other]) > 0) == (other == j), (name, other)
                    assert (grad[:, other].abs().sum(dim=-1) > 0).all() == (other == j), (name, other)
                continue
            r = config.r
            slabs = grad if name.endswith("lora_A") else grad.T  # (E*r, d_in) or (E*r, d_out)
            by_expert = slabs.reshape(-1, r, slabs.shape[-1])  # (E, r, d): one slab per expert
            own = {S + j * K + k for k in range(K)}
            for e in range(by_expert.shape[0]):
                touched = torch.count_nonzero(by_expert[e]) > 0
                assert touched == (e < S or e in own), (name, e)  # shared + own experts only


def test_baseline_shapes_are_configurations_of_the_same_layer():
    tasks = ["synonym", "antonym", "add", "mul", "sub"]
    shared = cgc.attach(tiny_llama(), cgc.presets.shared_lora(tasks, r=8, target_modules=["q_proj"]))
    per_task = cgc.attach(tiny_llama(), cgc.presets.per_task_lora(tasks, r=8, target_modules=["q_proj"]))
    layer = shared.adapted_layers()["model.layers.0.self_attn.q_proj"]
    assert layer.experts["all"].lora_A.shape == (8, 32) and shared.gates["all"].gate_logits is None
    layer = per_task.adapted_layers()["model.layers.0.self_attn.q_proj"]
    assert set(layer.experts) == set(tasks) and per_task.gates["add"].gate_logits is None


def test_the_scaled_low_rank_product_has_the_gradient_of_its_three_autograd_ops():
    from cgc.adapter.layer import ScaledLowRank

    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    x, a, b, s = rand(3, 5, 6), rand(4, 6), rand(7, 4), rand(3, 4)
    assert torch.autograd.gradcheck(ScaledLowRank.apply, (x, a, b, s))
    out = ScaledLowRank.apply(x, a, b, s)
    plain = F.linear(F.linear(x, a) * s[:, None, :], b)
    torch.testing.assert_close(out, plain)
    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    ours = torch.autograd.grad((out * weights).sum(), (x, a, b, s))
    theirs = torch.autograd.grad((plain * weights).sum(), (x, a, b, s))
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference)
