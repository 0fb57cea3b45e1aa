"""The recipe config's keys as the README documents them (`python -m cgc keys`): every leaf key, its default and its
one-line help, read from the config dataclasses themselves (each field's `knob` help), so the table cannot drift
from the code (a test compares the README's copy)."""

from __future__ import annotations

import dataclasses
import typing

from cgc.recipe.config import RecipeConfig


def key_table(cls=RecipeConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) of every leaf key of the recipe config, `cgc.*` included, in field order."""
    rows = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows += key_table(hint, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = (
                "null"
                if f.default is None
                else str(f.default).lower()
                if isinstance(f.default, bool)
                else str(f.default)
            )
        elif f.default_factory is not dataclasses.MISSING:
            default = str(f.default_factory())
        else:
            default = "required"
        rows.append((f"{prefix}{f.name}", default, f.metadata.get("help", "")))
    return rows


def key_table_markdown() -> str:
    lines = ["| key | default | what it does |", "|---|---|---|"]
    lines += [f"| `{key}` | `{default}` | {help} |" for key, default, help in key_table()]
    return "\n".join(lines) + "\n"
