"""Lock files: where they live, and the one way they are opened and taken.

A store has three lock files: the election's leader and standby locks
(:mod:`featbit_shm.sync.election`) and the registry lock (:mod:`.registry`).
They live in a per-account directory in /dev/shm,
``/dev/shm/featbit-shm-<uid>``, beside the objects themselves: every process
that shares /dev/shm shares the locks, whatever its TMPDIR or private /tmp.
The directory is created 0700 (01770 with the store's group) and refused --
a clear error naming it, then the next name, ``featbit-shm-<uid>.1`` ... --
when it is a link, belongs to another account or is writable by others.
``FEATBIT_SHM_RUNTIME_DIR`` names another directory (checked the same way).

Every lock is ``flock`` on a file opened with ``O_NOFOLLOW`` and checked
like any object (:mod:`.trust`): the kernel drops a dead holder's lock, so a
SIGKILLed process never wedges anyone, and a planted link is never followed.
The store's last owner removes its lock files (:func:`remove_lock_files`); a
process that took a lock on a file removed meanwhile notices (the name no
longer leads to the file it locked) and takes the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from .._core.errors import SharedMemoryError
from .._runtime.environment import env_str
from .trust import DIRECTORY, LOCK, StoreAccess, Untrusted

SHM_ROOT = "/dev/shm"
DIRECTORY_SLOTS = 8


def runtime_directory(access: StoreAccess, env: Mapping[str, str] | None = None) -> str:
    """This account's lock directory: the first of its names that is free or
    trusted (``FEATBIT_SHM_RUNTIME_DIR`` when set)."""
    override = env_str("FEATBIT_SHM_RUNTIME_DIR", env)
    if override:
        return override
    base = os.path.join(SHM_ROOT, f"featbit-shm-{access.owner}")
    refused = []
    for path in [base] + [f"{base}.{i}" for i in range(1, DIRECTORY_SLOTS)]:
        try:
            access.check(path, DIRECTORY, os.lstat(path))
        except FileNotFoundError:
            return path
        except Untrusted as exc:
            refused.append(exc.refusal.describe())
            continue
        return path
    raise SharedMemoryError("no usable lock directory: " + "; ".join(refused))


def ensure_directory(path: str, access: StoreAccess) -> None:
    """Create the directory of a lock file when it is missing, and check it."""
    directory = os.path.dirname(path)
    try:
        os.mkdir(directory, access.directory_mode())
        created = True
    except FileExistsError:
        created = False
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if created:
            access.apply(fd, DIRECTORY)
        access.check(directory, DIRECTORY, os.fstat(fd))
        access.widen(fd, DIRECTORY)
    finally:
        os.close(fd)


def open_lock_file(path: str, access: StoreAccess) -> int:
    """Open (creating it if needed) a lock file of this store; its descriptor."""
    ensure_directory(path, access)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, access.file_mode(LOCK))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            access.check(path, LOCK, os.lstat(path))  # raises: a link is not a regular file
        raise
    try:
        access.check(path, LOCK, os.fstat(fd))
        access.widen(fd, LOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def exclusive(path: str, access: StoreAccess) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` while the body runs.

    A plain ``fcntl.flock`` rather than a ``filelock.FileLock``: the
    semantics are the same (an exclusive lock on an open file, released by
    the kernel when its holder dies), but filelock 4 resets its fork-tracking
    state in every new process, which cost a freshly forked worker about
    1.4 ms of its 5 ms cold start (bench_fleet), and it follows links. Each
    use opens its own descriptor, so threads of one process exclude each
    other too; a waiter is woken by the kernel when the holder lets go.
    """
    while True:
        fd = open_lock_file(path, access)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _still_named(fd, path):
            break
        os.close(fd)  # the last owner removed the file while we waited: take the new one
    try:
        yield
    finally:
        os.close(fd)  # releases the lock


def _still_named(fd: int, path: str) -> bool:
    """Is the locked file still the one ``path`` names? Lock files can be
    removed by a store's last owner; a lock taken on a removed file is
    worthless, since the next opener creates a new one."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def remove_lock_files(paths: list[str], access: StoreAccess) -> None:
    """Remove a store's lock files (its last owner, on a clean stop), then
    the lock directory if nothing else is in it. Safe against waiters: a
    lock taken on a removed file is retried on the new one (see
    :func:`_still_named`)."""
    for path in paths:
        try:
            access.check(path, LOCK, os.lstat(path), record=False)
            os.unlink(path)
        except (OSError, Untrusted):
            continue
    if paths:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(paths[0]))  # only when empty


class FileLock:
    """A lock file held across calls (the election's leader and standby locks)."""

    def __init__(self, path: str, access: StoreAccess) -> None:
        self.path = path
        self._access = access
        self._fd = -1
        self._guard = threading.Lock()

    @property
    def is_locked(self) -> bool:
        return self._fd >= 0

    def acquire(self, timeout: float = 0.0, *, poll: float = 0.01, idle: Callable[[], None] | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds (``idle`` runs
        between polls). True when it is held."""
        with self._guard:
            if self._fd >= 0:
                return True
            fd = open_lock_file(self.path, self._access)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        return False
                    if idle is not None:
                        idle()
                    time.sleep(poll)
                    continue
                if not _still_named(fd, self.path):
                    # The file was removed (by the last owner) while we
                    # waited on it: a lock on it excludes nobody. Take the
                    # one now under that name.
                    os.close(fd)
                    fd = open_lock_file(self.path, self._access)
                    continue
                self._fd = fd
                return True

    def release(self) -> None:
        with self._guard:
            if self._fd >= 0:
                os.close(self._fd)  # the kernel drops the flock with the descriptor
                self._fd = -1
