"""Tokenisation of multi-task examples and the padding collator.

Prompt: the input through the tokenizer's chat template (an optional system turn, a user turn, the generation
prompt) when it has one, else `[system_prompt + separator] + input + separator`. Target: the target text
followed by EOS. Labels are -100 on the prompt and on padding, so the loss is on target tokens only.

Truncation policy, when prompt + target exceed `max_length`: the prompt is cut from the left (its start is
dropped, the end next to the answer is kept). The target is never cut: an example whose target + EOS alone
leaves no room for at least `min_prompt_tokens` of prompt is dropped. Both are counted per task. Text longer
than `max_length * MAX_CHARS_PER_TOKEN` characters is cut (prompt, from the left) or dropped (target) before
it is tokenised, so a multi-megabyte line costs no more than a long one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch

from cgc.adapter.task_map import TaskMap

IGNORE_INDEX = -100
# Characters one token covers at most, in practice (BPE vocabularies merge runs of spaces or repeated characters
# into long tokens, rarely past 16 characters): the bound for cutting text before it is tokenised.
MAX_CHARS_PER_TOKEN = 32


def chat_messages(text: str, system_prompt: str | None) -> list[dict]:
    """The chat messages of a prompt: an optional system turn, then the user turn. Training, eval and served
    requests (cgc.serving) all build them here, so a server applies the chat template to what training did."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": text}]


def prompt_token_ids(tokenizer, text: str, separator: str = "\n", system_prompt: str | None = None) -> list[int]:
    """Chat template (optional system turn, user turn, generation prompt) if the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = chat_messages(text, system_prompt)
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)
    return tokenizer((f"{system_prompt}{separator}" if system_prompt else "") + text + separator)["input_ids"]


def encode_example(
    tokenizer,
    text: str,
    target: str,
    max_length: int,
    separator: str = "\n",
    system_prompt: str | None = None,
    min_prompt_tokens: int = 1,
) -> dict:
    """-> input_ids, labels, truncated (prompt was cut), dropped (target does not fit)."""
    # Text beyond max_length tokens' worth of characters cannot end up in the example: cut it before tokenising,
    # so memory and time stay bounded however long a line is (the kept end is the same as before).
    bound = max_length * MAX_CHARS_PER_TOKEN
    if len(target) > bound:
        return {"input_ids": [], "labels": [], "truncated": False, "dropped": True}
    cut = len(text) > bound
    if cut:
        text = text[-bound:]
    prompt = prompt_token_ids(tokenizer, text, separator, system_prompt)
    answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    room = max_length - len(answer)
    if room < min_prompt_tokens:
        return {"input_ids": [], "labels": [], "truncated": False, "dropped": True}
    truncated = cut or len(prompt) > room
    if len(prompt) > room:
        prompt = prompt[len(prompt) - room :]
    return {
        "input_ids": prompt + answer,
        "labels": [IGNORE_INDEX] * len(prompt) + answer,
        "truncated": truncated,
        "dropped": False,
    }


class _Encoder:
    """Batched map function; an object (not a closure) so `datasets` fingerprints it and caches the result."""

    def __init__(self, tokenizer, task_map: TaskMap, max_length: int, separator: str, system_prompt):
        self.tokenizer, self.task_map, self.max_length = tokenizer, task_map, max_length
        self.separator, self.system_prompt = separator, system_prompt

    def __call__(self, batch: dict) -> dict:
        out = {"input_ids": [], "labels": [], "task_id": [], "truncated": [], "dropped": []}
        for task, text, target in zip(batch["task"], batch["input"], batch["target"], strict=True):
            encoded = encode_example(self.tokenizer, text, target, self.max_length, self.separator, self.system_prompt)
            for key in ("input_ids", "labels", "truncated", "dropped"):
                out[key].append(encoded[key])
            out["task_id"].append(self.task_map.id_of(task))
        return out


@dataclass
class TokenizationReport:
    """Per task: examples read, prompts truncated, examples dropped (target longer than max_length)."""

    examples: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"{task}: {n} examples, {self.truncated.get(task, 0)} prompts truncated, "
            f"{self.dropped.get(task, 0)} dropped"
            for task, n in sorted(self.examples.items())
        ]


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer,
    task_map: TaskMap,
    max_length: int,
    separator: str = "\n",
    system_prompt: str | None = None,
    num_proc: int | None = None,
) -> tuple[datasets.Dataset, TokenizationReport]:
    """Tokenise (cached by `datasets` fingerprinting), drop examples that cannot fit, report per task.
    Adds the `task_id` column (ids of `task_map`) that the sampler and the collator read."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token")
    encoded = dataset.map(
        _Encoder(tokenizer, task_map, max_length, separator, system_prompt),
        batched=True,
        num_proc=num_proc,
        desc="tokenizing",
    )
    report = TokenizationReport()
    for task, truncated, dropped in zip(encoded["task"], encoded["truncated"], encoded["dropped"], strict=True):
        report.examples[task] = report.examples.get(task, 0) + 1
        report.truncated[task] = report.truncated.get(task, 0) + int(truncated)
        report.dropped[task] = report.dropped.get(task, 0) + int(dropped)
    if any(report.dropped.values()):
        encoded = encoded.filter(lambda dropped: not dropped, input_columns="dropped", desc="dropping")
    return encoded, report


class MultiTaskCollator:
    """Pads a list of tokenised examples to the longest (optionally to a multiple of `pad_to_multiple_of`).

    Returns input_ids (B, T), attention_mask (B, T), labels (B, T) with -100 on padding, task_ids (B,).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None, padding_side: str = "right"):
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_token_id, self.multiple, self.padding_side = pad_token_id, pad_to_multiple_of, padding_side

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple  # round up
        input_ids, mask, labels = [], [], []
        for f in features:
            ids = list(f["input_ids"])
            pad = width - len(ids)
            lab = list(f["labels"]) if "labels" in f else [IGNORE_INDEX] * len(ids)
            if self.padding_side == "right":
                input_ids.append(ids + [self.pad_token_id] * pad)
                mask.append([1] * len(ids) + [0] * pad)
                labels.append(lab + [IGNORE_INDEX] * pad)
            else:
                input_ids.append([self.pad_token_id] * pad + ids)
                mask.append([0] * pad + [1] * len(ids))
                labels.append([IGNORE_INDEX] * pad + lab)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "task_ids": torch.tensor([f["task_id"] for f in features], dtype=torch.long),
        }
