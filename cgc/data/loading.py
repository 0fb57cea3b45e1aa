"""Multi-task examples from files: every example becomes {"task": str, "input": str, "target": str}.

Files are read with the `datasets` library (JSONL / JSON / parquet, or a directory written by
`Dataset.save_to_disk`), so they are memory-mapped and cached by `datasets` itself. Readers map the columns
of known formats onto task / input / target:

| format      | task                                   | input                      | target   |
|-------------|----------------------------------------|----------------------------|----------|
| generic     | task                                   | input                      | target   |
| promptcblue | task_dataset                           | input                      | target   |
| firefly     | kind                                   | input                      | target   |
| alpaca      | `task_field` column, else the file stem | instruction + "\\n\\n" + input | output   |
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

from cgc.adapter.errors import CGCError, UnknownTaskError
from cgc.adapter.task_map import TaskMap

FORMATS: dict[str, tuple[str, ...]] = {
    "generic": ("task", "input", "target"),
    "promptcblue": ("input", "target", "task_dataset"),
    "firefly": ("kind", "input", "target"),
    "alpaca": ("instruction", "input", "output"),
}
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(CGCError):
    """Bad data: the message names the file (and line, where there is one) and what is wrong."""


def load_examples(
    paths: str | os.PathLike | Sequence[str | os.PathLike], format: str = "auto", task_field: str | None = None
) -> datasets.Dataset:
    """Load and concatenate files into one Dataset with columns task, input, target."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise DataError("no data files given")
    if format != "auto" and format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; formats: auto, {', '.join(FORMATS)}")
    parts = [_read_file(Path(p), format, task_field) for p in paths]
    for path, part in zip(paths, parts, strict=True):
        if len(part) == 0:
            raise DataError(f"{path}: no examples in it")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def load_task_examples(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    task_map: TaskMap,
    format: str = "auto",
    task_field: str | None = None,
) -> datasets.Dataset:
    """`load_examples`, then `check_tasks`: every example's task is in the cluster map."""
    dataset = load_examples(paths, format, task_field)
    check_tasks(dataset, task_map)
    return dataset


def check_tasks(dataset: datasets.Dataset, task_map: TaskMap) -> None:
    """Every example's task must belong to a cluster."""
    try:
        task_map.check_known(dataset.unique("task"))
    except UnknownTaskError as err:
        raise DataError(str(err)) from None


def task_counts(dataset: datasets.Dataset) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in dataset["task"]:
        counts[task] = counts.get(task, 0) + 1
    return counts


def detect_format(columns: Sequence[str], where: str) -> str:
    fits = [name for name, needed in FORMATS.items() if set(needed) <= set(columns)]
    if len(fits) == 1:
        return fits[0]
    expected = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in FORMATS.items())
    if not fits:
        raise DataError(f"{where}: cannot tell the data format from columns {sorted(columns)}; expected {expected}")
    raise DataError(f"{where}: columns {sorted(columns)} fit several formats {fits}; set the format explicitly")


def _read_file(path: Path, format: str, task_field: str | None) -> datasets.Dataset:
    raw = _read_raw(path)
    fmt = detect_format(raw.column_names, str(path)) if format == "auto" else format
    missing = [c for c in FORMATS[fmt] if c not in raw.column_names]
    if missing:
        raise DataError(f"{path}: format {fmt!r} needs columns {missing}, found {sorted(raw.column_names)}")
    if fmt == "alpaca" and task_field is None and "task" in raw.column_names:
        task_field = "task"
    if task_field is not None and task_field not in raw.column_names:
        raise DataError(f"{path}: task field {task_field!r} is not a column; columns: {sorted(raw.column_names)}")
    reader = _Reader(fmt, task_field, path.stem if path.is_file() else path.name, str(path))
    return raw.map(
        reader, batched=True, with_indices=True, remove_columns=raw.column_names, desc=f"reading {path.name}"
    )


def _read_raw(path: Path) -> datasets.Dataset:
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except FileNotFoundError:  # datasets' word for a directory that holds no saved dataset
            raise DataError(
                f"{path}: a directory, but not a dataset saved with datasets' save_to_disk (no dataset_info.json / "
                "state.json): give a data file (.jsonl, .json, .csv, .parquet) or a saved dataset's directory"
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded and len(loaded) != 1:
                raise DataError(f"{path}: a DatasetDict with splits {list(loaded)}; point at one split's directory")
            loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        return loaded
    builder = FILE_BUILDERS.get(path.suffix)
    if builder is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json, .parquet or a dataset directory"
        )
    if builder == "json":
        _check_text(path)
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except DatasetGenerationError as err:
        if builder == "json":
            _raise_json_error(path, err)
        raise DataError(f"{path}: cannot read it: {err.__cause__ or err}") from err


def _check_text(path: Path) -> None:
    """A JSON/JSONL file must hold UTF-8 text and at least one record; say which line is not UTF-8 (pyarrow only
    raises a UnicodeDecodeError without a place). Reads the file once, line by line."""
    empty = True
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{line[bad.start]:02x} at column {bad.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            empty = empty and not text.strip()
    if empty:
        raise DataError(f"{path}: the file is empty: no examples to read")


def _raise_json_error(path: Path, err: Exception):
    """Find the first line that does not parse, so the error names file:line (datasets only says 'row N')."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as bad:
            raise DataError(f"{path}:{bad.lineno}: malformed JSON: {bad.msg}") from err
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as bad:
            raise DataError(f"{path}:{number}: malformed JSON line: {bad.msg}") from err
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}") from err
    raise DataError(f"{path}: cannot read it: {err.__cause__ or err}") from err


def _line_of_row(where: str, row: int) -> str:
    """'file:line' of the row-th record of a JSONL file (blank lines skipped), else 'file (record N)'."""
    if where.endswith(".jsonl") and os.path.isfile(where):
        with open(where, encoding="utf-8") as f:
            numbers = [n for n, line in enumerate(f, start=1) if line.strip()]
        if row < len(numbers):
            return f"{where}:{numbers[row]}"
    return f"{where} (record {row + 1})"


class _Reader:
    """Batched `datasets.map` function: raw columns of one format -> task, input, target (all str)."""

    def __init__(self, fmt: str, task_field: str | None, stem: str, where: str):
        self.fmt, self.task_field, self.stem, self.where = fmt, task_field, stem, where

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        n = len(indices)
        if self.fmt == "alpaca":
            inputs = [
                f"{ins}\n\n{inp}" if inp else ins for ins, inp in zip(batch["instruction"], batch["input"], strict=True)
            ]
            targets = batch["output"]
            tasks = batch[self.task_field] if self.task_field else [self.stem] * n
        else:
            inputs, targets = batch["input"], batch["target"]
            task_column = (
                self.task_field or {"generic": "task", "promptcblue": "task_dataset", "firefly": "kind"}[self.fmt]
            )
            tasks = batch[task_column]
        for field, values in (("task", tasks), ("input", inputs), ("target", targets)):
            for i, value in enumerate(values):
                if not isinstance(value, str) or (field == "task" and not value):
                    wanted = "a non-empty string" if field == "task" else f"a string, got {value!r}"
                    raise DataError(f"{_line_of_row(self.where, indices[i])}: {field} must be {wanted}")
        return {"task": list(tasks), "input": list(inputs), "target": list(targets)}
