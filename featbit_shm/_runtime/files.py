"""Reading the files a user names (bootstrap documents)."""

from __future__ import annotations

import os

from .._core.errors import DataError


def read_bootstrap_file(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes, or a DataError that names the file and the reason."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise DataError(f"cannot read bootstrap file {os.fspath(path)!r}: {exc.strerror or exc}") from None
