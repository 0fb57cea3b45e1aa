"""Tiny randomly initialised models and helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import cgc
from cgc.models.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]  # the repository
VOCAB = 104  # cgc.models.tiny: 4 special tokens + 100 printable characters
CLUSTERS = {"lexical": ["synonym", "antonym"], "math": ["add", "mul", "sub"]}


def tiny_llama(seed: int = 0):
    return tiny_model("tiny-llama", seed=seed, hidden_size=32).eval()


def tiny_qwen2(seed: int = 0):
    return tiny_model("tiny-qwen2", seed=seed, hidden_size=32).eval()


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
