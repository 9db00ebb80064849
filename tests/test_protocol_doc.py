"""docs/PROTOCOL.md is the one place R-n / G-n numbers are defined.

Code, tests and documents cite FeatBit rules by number. These tests keep those
citations honest: every number is defined exactly once in docs/PROTOCOL.md, every
number cited anywhere in the repository is defined there, and nothing points at
the external reference document the numbers were first collected in (it is not
shipped with the project).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"

# An item is defined by a list item that starts with its bold number: "- **R-12** ...".
DEFINITION = re.compile(r"^- \*\*([RG]-\d+)\*\*", re.MULTILINE)
CITATION = re.compile(r"\b[RG]-\d+\b")

SCANNED_DIRS = ("featbit_shm", "gunicorn_hooks", "tests", "benchmarks", "scripts", "examples", "docs")
SCANNED_FILES = ("README.md", "MIGRATING.md", "CHANGELOG.md")
SUFFIXES = {".py", ".md", ".c", ".cfg", ".toml", ".txt"}
SKIPPED = (ROOT / "tests" / "soak" / "results",)

# Built in two parts so this file does not name the document it forbids.
EXTERNAL_DOC = "featbit-" + "contract.md"


def _defined_numbers() -> list[str]:
    return DEFINITION.findall(PROTOCOL.read_text(encoding="utf-8"))


def _scanned_files() -> Iterator[Path]:
    for name in SCANNED_FILES:
        path = ROOT / name
        if path.is_file():
            yield path
    for name in SCANNED_DIRS:
        top = ROOT / name
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            if not path.is_file() or path.suffix not in SUFFIXES:
                continue
            if "__pycache__" in path.parts or any(path.is_relative_to(s) for s in SKIPPED):
                continue
            yield path


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    yield from enumerate(text.splitlines(), start=1)


def test_protocol_numbers_are_defined_once() -> None:
    numbers = _defined_numbers()
    assert any(n.startswith("R-") for n in numbers), "no R-n items found in docs/PROTOCOL.md"
    assert any(n.startswith("G-") for n in numbers), "no G-n items found in docs/PROTOCOL.md"
    duplicates = sorted(n for n, count in Counter(numbers).items() if count > 1)
    assert not duplicates, f"defined more than once in docs/PROTOCOL.md: {duplicates}"


def test_every_cited_number_is_defined() -> None:
    defined = set(_defined_numbers())
    unresolved = [
        f"{path.relative_to(ROOT)}:{lineno}: {number}"
        for path in _scanned_files()
        for lineno, line in _lines(path)
        for number in CITATION.findall(line)
        if number not in defined
    ]
    assert not unresolved, "cited but not defined in docs/PROTOCOL.md:\n" + "\n".join(unresolved)


def test_no_reference_to_the_external_document() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{lineno}"
        for path in _scanned_files()
        for lineno, line in _lines(path)
        if EXTERNAL_DOC in line
    ]
    assert not offenders, f"still mention {EXTERNAL_DOC} (cite docs/PROTOCOL.md instead):\n" + "\n".join(offenders)
