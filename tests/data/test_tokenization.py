"""Tokenisation: loss on target tokens only, the truncation policy, caching, and the collator."""

import json

import pytest
import torch

import cgc.data.tokenization as tokenization
from cgc.adapter.task_map import TaskMap
from cgc.data import load_examples
from cgc.data.tokenization import IGNORE_INDEX, MultiTaskCollator, encode_example, tokenize_dataset
from cgc.models.tiny import char_tokenizer

TASK_IDS = TaskMap.from_clusters({"math": ["add"], "text": ["upper"]})  # add -> 0, upper -> 1


@pytest.mark.parametrize("chat_template", [True, False], ids=["chat-template", "plain"])
def test_unmasked_labels_decode_to_exactly_the_target_and_eos(chat_template):
    tokenizer = char_tokenizer(chat_template=chat_template)
    encoded = encode_example(tokenizer, "what is 12 + 30?", "42", max_length=64)
    kept = [t for t in encoded["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(kept) == "42" + tokenizer.eos_token
    assert kept == encoded["input_ids"][-len(kept) :]  # the target sits at the end, after the whole prompt
    prompt = tokenizer.decode(encoded["input_ids"][: -len(kept)])
    if chat_template:
        assert prompt == "<user>what is 12 + 30?\n<assistant>"
    else:
        assert prompt == "what is 12 + 30?\n"


def test_prompt_is_truncated_from_the_left_and_target_never_cut():
    tokenizer = char_tokenizer(chat_template=False)
    encoded = encode_example(tokenizer, "abcdefghij", "XY", max_length=8)  # prompt 11 chars, target 2 + EOS
    assert encoded["truncated"] and not encoded["dropped"]
    assert len(encoded["input_ids"]) == 8
    assert tokenizer.decode(encoded["input_ids"]) == "ghij\nXY" + tokenizer.eos_token  # 8 - 3 = 5 prompt tokens
    dropped = encode_example(tokenizer, "abc", "a target far too long", max_length=8)
    assert dropped["dropped"] and dropped["input_ids"] == []


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tokenize_dataset_reports_truncated_and_dropped_per_task(tmp_path):
    rows = [
        {"task": "add", "input": "1 2", "target": "3"},
        {"task": "add", "input": "x" * 40, "target": "3"},  # truncated
        {"task": "upper", "input": "ab", "target": "Z" * 40},  # dropped
        {"task": "upper", "input": "cd", "target": "CD"},
    ]
    dataset = load_examples(write(tmp_path / "a.jsonl", rows))
    encoded, report = tokenize_dataset(dataset, char_tokenizer(), TASK_IDS, max_length=24)
    assert len(encoded) == 3
    assert report.examples == {"add": 2, "upper": 2}
    assert report.truncated == {"add": 1, "upper": 0}
    assert report.dropped == {"add": 0, "upper": 1}
    assert sorted(encoded["task_id"]) == [0, 0, 1]
    assert all(len(ids) <= 24 for ids in encoded["input_ids"])
    assert "upper: 2 examples, 0 prompts truncated, 1 dropped" in report.lines()


def test_second_tokenisation_comes_from_the_datasets_cache(tmp_path, monkeypatch):
    path = write(tmp_path / "a.jsonl", [{"task": "add", "input": f"{i} 1", "target": str(i + 1)} for i in range(20)])
    first, _ = tokenize_dataset(load_examples(path), char_tokenizer(), TASK_IDS, max_length=32)
    calls = []
    original = tokenization.encode_example
    monkeypatch.setattr(tokenization, "encode_example", lambda *a, **k: calls.append(1) or original(*a, **k))
    second, _ = tokenize_dataset(load_examples(path), char_tokenizer(), TASK_IDS, max_length=32)
    assert calls == []  # nothing re-tokenised
    assert second["input_ids"] == first["input_ids"]
    changed, _ = tokenize_dataset(load_examples(path), char_tokenizer(), TASK_IDS, max_length=31)
    assert len(calls) == 20  # a different max_length is a different fingerprint


def test_collator_pads_to_longest_or_multiple_and_masks_padding():
    features = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "task_id": 1},
        {"input_ids": [8], "labels": [8], "task_id": 0},
    ]
    batch = MultiTaskCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["task_ids"].tolist() == [1, 0] and batch["task_ids"].dtype == torch.long
    padded = MultiTaskCollator(pad_token_id=0, pad_to_multiple_of=8)(features)
    assert padded["input_ids"].shape == (2, 8) and padded["labels"][0, 3:].eq(-100).all()
    left = MultiTaskCollator(pad_token_id=0, padding_side="left")(features)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def test_system_prompt_goes_before_the_user_turn():
    for chat_template, expected in ((True, "<system>Be brief.\n<user>hi\n<assistant>"), (False, "Be brief.\nhi\n")):
        tokenizer = char_tokenizer(chat_template=chat_template)
        encoded = encode_example(tokenizer, "hi", "ok", max_length=64, system_prompt="Be brief.")
        assert tokenizer.decode(encoded["input_ids"]) == expected + "ok" + tokenizer.eos_token


def test_a_huge_line_is_cut_before_it_is_tokenised(monkeypatch):
    tokenizer = char_tokenizer(chat_template=False)  # one token per character
    seen = []
    original = tokenization.prompt_token_ids
    monkeypatch.setattr(
        tokenization, "prompt_token_ids", lambda tok, text, *a: seen.append(len(text)) or original(tok, text, *a)
    )
    huge = "abcdefghij" * 500_000  # 5 MB
    encoded = encode_example(tokenizer, huge, "XY", max_length=64)
    assert seen == [64 * tokenization.MAX_CHARS_PER_TOKEN]  # never the 5 MB
    assert encoded["truncated"] and not encoded["dropped"]
    assert encoded == encode_example(tokenizer, huge[-200:], "XY", max_length=64)  # the same kept end
    dropped = encode_example(tokenizer, "abc", "Z" * 5_000_000, max_length=64)
    assert dropped["dropped"] and len(seen) == 2  # a target that long is dropped without tokenising it
