"""Base-model loading: a built-in tiny model is built from the seed it is given, by every loader (one code path)."""

import pytest
import torch

from cgc.models import load_base_model, load_recipe_model, tiny_model


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("seed", [0, 3])
def test_every_loader_builds_the_tiny_model_of_the_given_seed(seed):
    expected = tiny_model("tiny-llama", seed=seed)
    plain, _ = load_base_model("tiny-llama", seed=seed)
    recipe, _ = load_recipe_model("tiny-llama", None, "none", "float32", seed=seed)
    assert same_weights(plain, expected) and same_weights(recipe, expected)


def test_two_seeds_give_two_models():
    assert not same_weights(load_base_model("tiny-llama", seed=0)[0], load_base_model("tiny-llama", seed=3)[0])
