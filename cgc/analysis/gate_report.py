"""What a gated method's gates learned (CGC-LoRA's and its controls'): per task and transformer block, the share
of the gate on the task's own experts (the rest is on its cluster's shared experts), read from the gates.json files
finetune.py writes. A share near 0: the task leans on what its cluster shares; near 1: on its own experts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from cgc.training.run_dir import RunDir

_BLOCK = re.compile(r"\.(\d+)\.")  # the block index in 'model.layers.7.self_attn.q_proj'


def own_share(gate_files: list[dict]) -> tuple[dict[str, list[float]], float, float | None]:
    """gates.json contents (one per seed) -> ({task: [own-expert share per block]}, the share a uniform gate
    gives, K / (S + K), the share the gates started from (None: a random start, or files that do not say)),
    averaged over the block's adapted projections and over seeds. Tasks whose cluster has no shared or no own
    experts are left out."""
    per_task: dict[str, list[np.ndarray]] = {}
    uniform = 0.0
    starts = {gates.get("start_own_share") for gates in gate_files}
    start = starts.pop() if len(starts) == 1 else None
    for gates in gate_files:
        shared = gates["num_shared_experts"]
        for task, layers in gates["tasks"].items():
            blocks: dict[int, list[float]] = {}
            for order, (name, g) in enumerate(layers.items()):
                if len(g) <= shared or shared == 0:
                    break
                match = _BLOCK.search(name)
                blocks.setdefault(int(match.group(1)) if match else order, []).append(sum(g[shared:]))
                uniform = (len(g) - shared) / len(g)
            if blocks:
                per_task.setdefault(task, []).append(np.array([np.mean(blocks[b]) for b in sorted(blocks)]))
    return {task: np.mean(runs, axis=0).tolist() for task, runs in per_task.items()}, uniform, start


def method_gates(runs: dict[str, list[Path]], budget: str) -> dict[str, dict]:
    """method -> its runs' dirs (one per seed) under `budget` => method -> {own_share, uniform_share, start_share,
    summary, budget} for each method whose gates split a task between shared and own experts (MOELoRA's, shared and
    per-task LoRA's do not), in the order given. Runs without gates.json are skipped. `budget` is kept with them: a
    control may be another model under each budget."""
    gates = {}
    for method, dirs in runs.items():
        paths = [RunDir(d).gates for d in dirs]
        files = [json.loads(path.read_text()) for path in paths if path.is_file()]
        shares, uniform, start = own_share(files) if files else ({}, 0.0, None)
        if shares:
            line = summary(shares, uniform, start)
            gates[method] = {"own_share": shares, "uniform_share": uniform, "start_share": start, "summary": line,
                             "budget": budget}  # fmt: skip
    return gates


def summary(shares: dict[str, list[float]], uniform: float, start: float | None = None) -> str:
    """One line for report.md. `start`: the own share the gates started from, named when it is not the uniform
    one (an own-biased start is off uniform before any step)."""
    means = {task: float(np.mean(s)) for task, s in shares.items()}
    overall = float(np.mean(list(means.values())))
    most_own = max(means, key=means.get)
    most_shared = min(means, key=means.get)
    first = np.mean([s[: max(1, len(s) // 3)] for s in shares.values()])
    last = np.mean([s[-max(1, len(s) // 3) :] for s in shares.values()])
    started = "" if start is None or abs(start - uniform) < 1e-6 else f"; these gates started at {start:.0%}"
    return (
        f"Gates: on average {1 - overall:.0%} of each task's gate is on its cluster's shared experts and "
        f"{overall:.0%} on its own (a uniform gate: {uniform:.0%}{started}); most on its own experts: "
        f"`{most_own}` ({means[most_own]:.0%} own), most on the shared ones: `{most_shared}` "
        f"({1 - means[most_shared]:.0%} shared); own share {first:.0%} in the first third of the blocks, {last:.0%} in "
        "the last third."
    )


def plot_heatmap(shares: dict[str, list[float]], path, method: str = "CGC-LoRA") -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    tasks = list(shares)
    grid = np.array([shares[t] for t in tasks])  # (tasks, blocks)
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * grid.shape[1] + 3), 0.4 * len(tasks) + 1.5))
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("transformer block")
    ax.set_title(f"{method}\ngate weight on the task's own experts (1 − shared), mean over projections and seeds")
    fig.colorbar(image, ax=ax, label="own-expert share")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
