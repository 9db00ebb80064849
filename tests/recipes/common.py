"""Helpers every recipe test uses (tests/recipes)."""

from __future__ import annotations

import re


def fenced_blocks(text: str) -> list[str]:
    """The code blocks of a Markdown page, as the reader copies them."""
    return [m.group(1) for m in re.finditer(r"^```[\w-]*\n(.*?)^```", text, re.S | re.M)]


def parent_of(pid: int) -> int:
    """The parent pid of ``pid``, from /proc (the command name may hold any byte)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read()
    return int(raw[raw.rindex(b")") + 2 :].split()[1])
