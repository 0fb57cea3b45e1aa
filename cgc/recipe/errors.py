"""How a recipe refuses: `RecipeConfigError` for a bad config or input, and `error_exit`, the one-message exit
(code 2, no traceback) every recipe uses for it."""

from __future__ import annotations

import sys

from cgc.adapter.errors import CGCError
from cgc.training.distributed import rank


class RecipeConfigError(CGCError):
    """A bad recipe config or recipe input; the message lists every problem found."""


ConfigError = RecipeConfigError  # its name before cgc.CGCError had subclasses per layer


def error_exit(message: str, code: int = 2) -> None:
    """A clear one-message failure (printed once, by rank 0), no traceback."""
    if rank() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
