"""A checkpoint's completion marker, `cgc_complete.json`: written last, it says the save finished and lists every
file of the checkpoint with its size and CRC-32, so that a resume checks the files before it loads any of them
(cgc.training.checkpoint: `resume=latest` skips a damaged checkpoint, naming the file; an explicit one refuses)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

from cgc.training.run_dir import write_text_atomically

COMPLETE_MARKER = "cgc_complete.json"


def mark_complete(tag_dir: Path, step: int, world_size: int, zero_stage: int | None = None, **extra) -> None:
    """The marker, written last: the save's facts and every file of it with its size and CRC-32 (`manifest`)."""
    marker = {"step": step, "world_size": world_size, "zero_stage": zero_stage, **extra, "files": manifest(tag_dir)}
    write_text_atomically(tag_dir / COMPLETE_MARKER, json.dumps(marker))  # the marker is either absent or whole


def manifest(tag_dir: Path) -> dict[str, list[int]]:
    """Every file of a checkpoint but the marker: relative path -> [bytes, CRC-32 (zlib's)]. CRC-32 finds a
    truncated, zeroed or bit-flipped file at ~1 GB/s; it is no defence against deliberate changes."""
    files = sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER)
    return {str(p.relative_to(tag_dir)): [p.stat().st_size, crc32_of(p)] for p in files}


def crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            crc = zlib.crc32(block, crc)
    return crc


def read_marker(tag_dir: Path) -> dict:
    """The completion marker of `tag_dir`, or ValueError naming it when it is not a whole JSON object."""
    path = tag_dir / COMPLETE_MARKER
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is damaged ({err})") from None
    if not isinstance(marker, dict) or "world_size" not in marker:
        raise ValueError(f"{path} is damaged (not a cgc completion marker)")
    return marker


def damage(tag_dir: Path) -> str | None:
    """What is wrong with a complete checkpoint's files, naming the first damaged one; None when every file the
    marker lists has its size and CRC-32 (markers before the manifest list none: nothing to check)."""
    try:
        listed = read_marker(tag_dir).get("files", {})
    except ValueError as err:
        return str(err)
    try:
        listed = {str(name): (int(size), int(crc)) for name, (size, crc) in listed.items()}
    except (AttributeError, TypeError, ValueError):
        return f"{tag_dir / COMPLETE_MARKER} is damaged (its file list is not name -> [bytes, crc32])"
    for name, (size, crc) in listed.items():
        path = tag_dir / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} when saved"
        if crc32_of(path) != crc:
            return f"{path} changed since it was saved (CRC-32 differs)"
    return None
