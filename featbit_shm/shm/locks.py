"""Lock files: where they live and the one way they are taken.

A store has three lock files, all in one runtime directory (see
:func:`runtime_directory`): the election's leader and standby locks (taken
by :mod:`featbit_shm.sync.election`) and the registry lock (taken here, by
:mod:`.registry`). Every lock is ``flock`` on an open file: the kernel drops
it when its holder dies, so a SIGKILLed process never wedges anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping

from .._runtime.environment import env_str


def runtime_directory(env: Mapping[str, str] | None = None) -> str:
    """The directory of this account's lock files: ``FEATBIT_SHM_RUNTIME_DIR``,
    else ``$TMPDIR/featbit-shm`` (``/tmp/featbit-shm``)."""
    return env_str("FEATBIT_SHM_RUNTIME_DIR", env) or os.path.join(env_str("TMPDIR", env) or "/tmp", "featbit-shm")


def ensure_directory(path: str) -> None:
    """Create the directory a lock file lives in (0700) when it is missing."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` while the body runs.

    A plain ``fcntl.flock`` rather than a ``filelock.FileLock``: the
    semantics are the same (an exclusive lock on an open file, released by
    the kernel when its holder dies), but filelock 4 resets its fork-tracking
    state in every new process, which cost a freshly forked worker about
    1.4 ms of its 5 ms cold start (bench_fleet), twice the rest of the
    registration. Each use opens its own descriptor, so threads of one
    process exclude each other too; a waiter is woken by the kernel when the
    holder lets go (no polling).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
