"""Tiny randomly initialised models and helpers shared by the tests."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import cgc

VOCAB = 96
CLUSTERS = {"lexical": ["synonym", "antonym"], "math": ["add", "mul", "sub"]}


TINY_SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY_SHAPE)).eval()


def tiny_qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**TINY_SHAPE)).eval()


MODEL_FACTORIES = {"llama": tiny_llama, "qwen2": tiny_qwen2}


def make_config(**overrides) -> cgc.CGCLoraConfig:
    kwargs = dict(
        clusters=CLUSTERS,
        r=4,
        alpha=8,
        num_shared_experts=2,
        num_task_experts=1,
        target_modules=["q_proj", "v_proj", "down_proj"],
    )
    kwargs.update(overrides)
    return cgc.CGCLoraConfig(**kwargs)


def randomize_adapter(model: cgc.CGCModel, seed: int = 1, scale: float = 0.3) -> None:
    """Non-zero A, B and gate logits, so that exactness tests can fail."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.trainable_parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def base_factory(request):
    return MODEL_FACTORIES[request.param]


@pytest.fixture
def cgc_model(base_factory):
    model = cgc.attach(base_factory(), make_config())
    randomize_adapter(model)
    return model


def batch(batch_size: int = 5, length: int = 9, seed: int = 3) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch_size, length), generator=torch.Generator().manual_seed(seed))
