"""The training loss on target tokens only, computed only where it is needed.

Batches are left-padded (`MultiTaskCollator(padding_side="left")`), so every target sits at the end of its row
and the last k positions (k = the longest target + 1) hold every position the loss reads. The model then runs
its output layer (a vocabulary-wide matmul: about a fifth of a small model's compute) and the loss its float32
copy of the logits on those k positions only. Position ids count from each row's first real token, so a row's
outputs are those of the same row right-padded.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from cgc.data.tokenization import IGNORE_INDEX


def takes_logits_to_keep(model) -> bool:
    """Whether the wrapped transformers model's forward can compute logits for the last k positions only."""
    base = getattr(model, "base_model", model)
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def forward_on_targets(model, batch: dict, logits_to_keep: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`model` (a CGCModel, or the DeepSpeed engine around one) on a left-padded batch: the logits of the last k
    positions and the labels they line up with. -> ((B, k, V), (B, k)). With `logits_to_keep` False (a model
    whose forward does not take it), k is the full width."""
    labels, mask = batch["labels"], batch["attention_mask"]
    width = labels.shape[1]
    k = width
    has_target = labels != IGNORE_INDEX  # (B, T)
    if logits_to_keep and has_target.any():
        first = torch.where(has_target.any(dim=1), has_target.int().argmax(dim=1), width)  # (B,) first target
        k = min(width, width - int(first.min()) + 1)  # the position before a row's first target predicts it
    extra = {"logits_to_keep": k} if logits_to_keep else {}
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=mask,
        position_ids=(mask.cumsum(dim=1) - 1).clamp_min(0),
        task_ids=batch["task_ids"],
        **extra,
    ).logits
    return logits, labels[:, width - logits.shape[1] :]


def target_tokens(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels -> (B,) number of target tokens the loss is taken over (position t predicts token t+1)."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def token_loss(logits: torch.Tensor, labels: torch.Tensor):
    """Summed loss over target tokens, plus per-sample sums and token counts (for per-task losses).
    logits (B, k, V) line up with labels (B, k): position t predicts label t+1."""
    per_token = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, k-1); ignored positions are 0
    per_sample = per_token.sum(dim=1)
    return per_sample.sum(), per_sample.detach(), target_tokens(labels)
