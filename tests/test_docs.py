"""Docs the code cites are in the repository, and the sections it cites exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/([\w-]+\.md)(?: §(\d+))?")
# Names of design notes kept outside the repository (a user's clone has none of them), spelled
# in pieces so that this file does not name them itself.
_NOTES = ("/".join(("shared", "design")), *(f"{n}\\.md" for n in ("p2-law", "house-style")))
OUTSIDE = re.compile("|".join((*_NOTES, r"(?<![\w/])field\.md")))


def tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    suffixes = {".py", ".md", ".sh", ".yml", ".toml", ".ini", ".json", ".txt", ".cfg"}
    return [
        ROOT / n
        for n in names
        if (Path(n).suffix in suffixes or n in {"Makefile", "Dockerfile"}) and (ROOT / n).is_file()
    ]


def test_no_file_points_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in tracked_text_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_every_cited_doc_and_section_exists() -> None:
    sections: dict[str, set[str]] = {}
    missing = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for doc, section in CITATION.findall(line):
                target = ROOT / "docs" / doc
                if not target.is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: docs/{doc}")
                    continue
                if doc not in sections:
                    sections[doc] = set(re.findall(r"^## (\d+)\.", target.read_text(), re.M))
                if section and section not in sections[doc]:
                    missing.append(f"{path.relative_to(ROOT)}:{number}: docs/{doc} §{section}")
    assert missing == []
    assert {"1", "2", "3", "4", "5", "6", "7"} <= sections["law.md"]


TEST_ID = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def test_every_test_the_docs_cite_exists() -> None:
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path, name in TEST_ID.findall(doc.read_text()):
            source = ROOT / path
            if not source.is_file():
                missing.append(f"{doc.name}: {path}")
            elif name and not re.search(rf"^def {name}\(", source.read_text(), re.M):
                missing.append(f"{doc.name}: {path}::{name}")
    assert missing == []


def test_the_readmes_map_names_every_module() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture") : readme.index("## Configuration")]
    words = set(re.findall(r"[\w]+", section))
    missing = [
        str(path.relative_to(ROOT))
        for package in ("app", "workers", "studies")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.stem != "__init__" and path.stem not in words
    ]
    assert missing == []
