"""Unprivileged accounts for multi-user tests, made with useradd and removed after."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def unprivileged_account(prefix: str) -> Iterator[pwd.struct_passwd]:
    """A fresh account (with its own group); skips the test, saying why, when
    this is not root or useradd is missing. On exit every /dev/shm entry the
    account owns is removed, then the account."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create an unprivileged account with useradd")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("useradd/userdel are not installed: a second account cannot be made")
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name], check=True, capture_output=True)
    account = pwd.getpwnam(name)
    try:
        yield account
    finally:
        for entry in os.listdir("/dev/shm"):
            path = os.path.join("/dev/shm", entry)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_uid == account.pw_uid:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
        subprocess.run(["userdel", name], check=False, capture_output=True)
