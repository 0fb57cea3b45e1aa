"""The recipe's loss: left-padded batches, logits of the last k positions only, equal to the full computation."""

import torch

import cgc
from cgc.data.tokenization import IGNORE_INDEX, MultiTaskCollator
from cgc.training.target_loss import forward_on_targets, takes_logits_to_keep, target_tokens, token_loss
from tests.conftest import make_config, randomize_adapter


def features(seed: int = 0) -> list[dict]:
    """Prompts and targets of different lengths, one task each (names from conftest.CLUSTERS)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for task_id, (prompt, target) in enumerate([(3, 5), (9, 1), (6, 3), (2, 7), (12, 2)]):
        ids = torch.randint(3, 100, (prompt + target,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:], "task_id": task_id})
    return rows


def test_last_k_logits_of_a_left_padded_batch_give_the_full_right_padded_loss(base_factory):
    model = cgc.attach(base_factory(), make_config())
    randomize_adapter(model)
    assert takes_logits_to_keep(model)
    right = MultiTaskCollator(0, padding_side="right")(features())
    left = MultiTaskCollator(0, padding_side="left")(features())
    with torch.no_grad():
        full = model(input_ids=right["input_ids"], attention_mask=right["attention_mask"], task_ids=right["task_ids"])
        total, per_sample, tokens = token_loss(full.logits, right["labels"])
        logits, labels = forward_on_targets(model, left)
        kept_total, kept_per_sample, kept_tokens = token_loss(logits, labels)
    width = left["input_ids"].shape[1]  # 14; the longest target is 7 tokens
    assert logits.shape[1] == 8 < width and labels.shape == logits.shape[:2]
    assert kept_tokens.tolist() == tokens.tolist() == [5, 1, 3, 7, 2]
    torch.testing.assert_close(kept_per_sample, per_sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept_total, total, atol=1e-5, rtol=1e-5)
    # Without logits_to_keep the whole width comes back, with the same loss.
    with torch.no_grad():
        all_logits, all_labels = forward_on_targets(model, left, logits_to_keep=False)
    assert all_logits.shape[1] == width
    torch.testing.assert_close(token_loss(all_logits, all_labels)[1], per_sample, atol=1e-5, rtol=1e-5)


def test_target_tokens_counts_the_positions_the_loss_reads():
    labels = torch.tensor([[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX], [4, 5, 6]])
    assert target_tokens(labels).tolist() == [2, 0, 2]  # the first token is never predicted
