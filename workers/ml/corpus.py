"""The default corpus: the Python standard library's own sources (code and docstrings).

Every Python installation carries them, so a model can be made and a job run on a machine
with no dataset and no network. Test suites, `site-packages` and caches are skipped; the
order is the sorted relative path, so the same installation always yields the same text.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from app.core import atomic
from workers.ml.data import DOC_SEPARATOR

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    """Directory of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_sources(root: Path | None = None) -> Iterator[tuple[str, str]]:
    """(relative path, text) of every stdlib `.py` file outside test and package directories."""
    base = root or stdlib_root()
    for dirpath, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(".py") or name.startswith("test_"):
                continue
            path = Path(dirpath) / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few files are not UTF-8 or unreadable: leave them out
            yield str(path.relative_to(base)), text.replace(DOC_SEPARATOR, "")


def default_documents(max_bytes: int | None = None) -> list[str]:
    """The stdlib sources as documents, stopping before `max_bytes` of UTF-8 text."""
    docs: list[str] = []
    size = 0
    for _rel, text in iter_stdlib_sources():
        n = len(text.encode("utf-8"))
        if max_bytes is not None and size + n > max_bytes:
            if not docs:  # keep at least a prefix of the first file
                docs.append(text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore"))
            break
        docs.append(text)
        size += n
    return docs


def write_corpus(
    out_path: Path, max_bytes: int | None = None, docs: list[str] | None = None
) -> Path:
    """Write documents (default: the stdlib corpus) as one .txt file, records separated.

    Written to a temp file and renamed, so a job never reads a half-written corpus.
    """
    texts = docs if docs is not None else default_documents(max_bytes)
    atomic.write_text(out_path, DOC_SEPARATOR.join(texts))
    return out_path
