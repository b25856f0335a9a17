"""Writes that a crash cannot leave half done: a file or a folder is either the old one or the
complete new one.

Everything is written under a temporary name in the destination's own folder (so the final
rename never crosses a file system), flushed to disk, renamed into place, and the folder's entry
is flushed too; the temporary names start with a dot, so readers that list a folder skip them.
A job's checkpoints, token shards, manifests, converted models, the embedded broker's messages
and the studies' result files all go through here.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk (before an atomic rename)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            with open(os.path.join(dirpath, filename), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def temporary_sibling(path: Path, kind: str = "tmp") -> Path:
    """A unique dot-name beside ``path`` (same folder, so a rename onto ``path`` is atomic)."""
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}"


def write_with(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(file)`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def write(fh: IO[bytes]) -> None:
        fh.write(data)

    return write_with(path, write)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any, *, indent: int | None = 1) -> Path:
    """Write ``value`` as JSON (non-JSON values as their ``str``) to ``path`` atomically."""
    return write_text(path, json.dumps(value, indent=indent, default=str) + "\n")


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move the finished folder ``tmp`` to ``final`` (replacing what is there) durably.

    ``rename`` cannot replace a non-empty folder, so an existing ``final`` is first moved aside
    and removed after the new one is in place: at every moment ``final`` is absent, old or new.
    """
    fsync_tree(tmp)
    old: Path | None = None
    if final.exists():
        old = temporary_sibling(final, "old")
        os.rename(final, old)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; when the block ends without an error it
    becomes ``final`` (:func:`publish_dir`), otherwise it is removed and ``final`` is untouched."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        publish_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
