"""The errors cgc raises for bad input, under one base: `except cgc.CGCError` catches every one of them.

`CGCError` subclasses `ValueError`, so code that caught cgc's ValueErrors before still does. Its subclasses name
the layer that refused: the adapter's (`AdapterConfigError`, `UnknownTaskError`, here), the data's
(`cgc.data.DataError`), a run directory's (`cgc.training.run_dir.RunDirError`) and the recipe's
(`cgc.recipe.RecipeConfigError`). A message that lists several problems reads the same everywhere (`bulleted`).
"""

from __future__ import annotations

from collections.abc import Iterable


def bulleted(title: str, problems: Iterable[str]) -> str:
    """`title:` then one indented `- problem` line per problem."""
    return f"{title}:\n  - " + "\n  - ".join(problems)


class CGCError(ValueError):
    """Bad input, named in the message. `problems` holds each problem when the message lists several (else it is
    empty), so a caller can merge them into a report of its own without parsing text."""

    def __init__(self, message: str, problems: Iterable[str] = ()):
        self.message, self.problems = message, list(problems)
        super().__init__(bulleted(message, self.problems) if self.problems else message)

    def __reduce__(self):  # pickled (e.g. across processes) with its problems, not only the joined text
        return type(self), (self.message, self.problems)


class AdapterConfigError(CGCError):
    """A `CGCLoraConfig` with problems (all of them listed)."""


class UnknownTaskError(CGCError):
    """A task name (or id) that is in no cluster."""
