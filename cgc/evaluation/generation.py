"""Greedy answers for held-out examples: the examples picked task by task, batches that mix tasks and clusters,
sharded over ranks when a process group exists."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from cgc.adapter.model import CGCModel
from cgc.data.tokenization import MultiTaskCollator, prompt_token_ids
from cgc.training.distributed import gather_objects


@torch.no_grad()
def greedy_answers(
    model: CGCModel,
    tokenizer,
    examples: list[dict],
    max_new_tokens: int,
    system_prompt: str | None = None,
    synced_gpus: bool = False,
) -> list[str]:
    """Left-padded prompts (the same prompt format as training), one task id per example, greedy decoding;
    returns the stripped answer of each example.

    `synced_gpus=True` under ZeRO-3 (needed with several ranks, harmless with one): every rank then runs the
    same number of forward passes (transformers' synced_gpus) and calls every cluster's experts in the same order
    (`every_cluster`), since the ranks' batches hold different tasks and ZeRO-3 gathers parameters collectively."""
    collate = MultiTaskCollator(tokenizer.pad_token_id, padding_side="left")
    features = [
        {
            "input_ids": prompt_token_ids(tokenizer, ex["input"], system_prompt=system_prompt),
            "task_id": model.task_id(ex["task"]),
        }
        for ex in examples
    ]
    batch = {k: v if k == "task_ids" else v.to(model.device) for k, v in collate(features).items()}  # ids: host
    generated = model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        task_ids=batch["task_ids"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        synced_gpus=synced_gpus,
        every_cluster=synced_gpus,
    )
    width = batch["input_ids"].shape[1]  # (B, width + new) -> the new tokens only
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in generated[:, width:]]


def pick_examples(rows, max_per_task: int, tasks: list[str]) -> list[dict]:
    """The first `max_per_task` examples of each task, interleaved task by task so that every
    generation batch mixes tasks (and clusters), as serving traffic would."""
    per_task: dict[str, list[dict]] = {t: [] for t in tasks}
    for row in rows:
        kept = per_task.setdefault(row["task"], [])
        if len(kept) < max_per_task:
            kept.append(dict(row))
    queues = [kept for kept in per_task.values() if kept]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


@torch.no_grad()
def generate_answers(
    model: CGCModel,
    tokenizer,
    examples: list[dict],
    batch_size: int,
    max_new_tokens: int,
    system_prompt: str | None = None,
    zero3: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> list[str] | None:
    """One greedy answer per example, in order. With a process group each rank answers a slice and the answers
    are gathered; under ZeRO-3 every rank runs the same number of (synced) generate calls.

    `should_stop` is asked before each batch (on every rank: it must give every rank the same answer); when it
    says True, generation stops there and None is returned."""
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    model.eval()
    mine = list(range(rank, len(examples), world))
    batches = math.ceil(math.ceil(len(examples) / world) / batch_size)
    answered: list[tuple[int, str]] = []
    for b in tqdm(range(batches), desc="eval", unit="batch", disable=rank != 0):
        if should_stop is not None and should_stop():
            return None
        index = mine[b * batch_size : (b + 1) * batch_size]
        chunk = [examples[i] for i in index] or examples[:1]  # a rank with nothing left repeats one, unused
        answers = greedy_answers(model, tokenizer, chunk, max_new_tokens, system_prompt, synced_gpus=zero3)
        answered += list(zip(index, answers[: len(index)], strict=True))  # drop the repeat's answer
    if world > 1:
        answered = [pair for part in gather_objects(answered) for pair in part]
    result = [""] * len(examples)
    for i, answer in answered:
        result[i] = answer
    return result
