"""The frozen base model: built-in tiny random models with a character tokenizer (`tiny`: tests, quick CPU runs,
GPU benchmarks without a hub) and loading a local, hub, GGUF or packaged checkpoint, optionally NF4 / int8
(`base_model`)."""

from cgc.models.base_model import load_base_model, load_recipe_model
from cgc.models.tiny import TINY_MODELS, char_tokenizer, tiny_model

__all__ = ["TINY_MODELS", "char_tokenizer", "load_base_model", "load_recipe_model", "tiny_model"]
