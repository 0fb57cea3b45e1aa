"""Built-in tiny models and a character-level tokenizer, for tests and quick CPU runs with nothing to download.

`model.name_or_path: tiny-llama` (or `tiny-qwen2`) in a recipe config builds a small randomly initialised model;
`random-llama-1b` builds a randomly initialised Llama with Llama-3.2-1B's layer shapes (0.97 B parameters in its
linear layers), for GPU tests and benchmarks on machines with no hub access. `char_tokenizer()` tokenizes any
ASCII text one character per token; every built-in model's vocabulary matches it.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<pad>", "</s>", "<s>", "<unk>"]
CHARS = string.printable  # letters, digits, punctuation, whitespace
# A minimal chat template, so the chat-template code path is exercised without a real model.
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
TINY_MODELS = {
    "tiny-llama": (LlamaConfig, LlamaForCausalLM),
    "tiny-qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "random-llama-1b": (LlamaConfig, LlamaForCausalLM),
}
# Shapes other than the tiny default: Llama-3.2-1B's (hidden 2048, MLP 8192, 16 layers, 32 heads, 8 KV heads).
SHAPES = {"random-llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_layers": 16, "heads": (32, 8)}}


def char_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    """One token per character; ids 0..3 are <pad>, </s>, <s>, <unk>."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + sorted(set(CHARS)))}
    # BPE without merges splits every word into characters; Fuse joins them back without spaces on decode.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>", unk_token="<unk>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(name: str = "tiny-llama", seed: int = 0, hidden_size: int = 64, num_layers: int = 2):
    """A random causal LM whose vocabulary matches `char_tokenizer()` (`hidden_size` and `num_layers` apply to the
    tiny models; `random-llama-1b` has fixed shapes)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; built-in tiny models: {sorted(TINY_MODELS)}")
    config_class, model_class = TINY_MODELS[name]
    shape = SHAPES.get(name, {"hidden_size": hidden_size, "num_layers": num_layers, "heads": (4, 2)})
    config = config_class(
        vocab_size=len(SPECIAL_TOKENS) + len(set(CHARS)),
        hidden_size=shape["hidden_size"],
        intermediate_size=shape.get("intermediate_size", shape["hidden_size"] * 2),
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["heads"][0],
        num_key_value_heads=shape["heads"][1],
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return model_class(config)
