"""Greedy answers for a batch that mixes tasks, as the recipes' evaluations use them."""

from __future__ import annotations

import torch

from cgc.model import CGCModel
from cgc.tokenization import MultiTaskCollator, prompt_token_ids


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
    batch = {k: v.to(model.device) for k, v in collate(features).items()}
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
