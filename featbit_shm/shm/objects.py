"""Creating, opening and removing shared-memory objects: the calls every object kind shares.

An object is a file in /dev/shm (what ``shm_open`` makes on Linux), reached
by its name (``/fbshm.<uid>.<tag>...``). Every object is created exclusively
(``O_CREAT | O_EXCL | O_NOFOLLOW``) with its space reserved by
``posix_fallocate``, so a full /dev/shm is a clear
:class:`~featbit_shm.errors.SharedMemoryError` when the object is made, never
a SIGBUS when a page is first touched. Every object is opened with
``O_NOFOLLOW`` and checked with ``fstat`` against the store's trust rule
(:mod:`.trust`) before a byte of it is read; one that fails is refused,
and never unlinked.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable

from .._core.errors import SharedMemoryError
from .._core.snapshot import SnapshotError
from .names import SHM_DIR, StoreNames
from .trust import CONTROL, REGISTRY, RING, SNAPSHOT, Refusal, StoreAccess, Untrusted

Fallocate = Callable[[int, int, int], None]

_CREATE: int = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _free_bytes() -> int:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def path_of(name: str) -> str:
    return SHM_DIR + name


def create_object(name: str, size: int, kind: str, access: StoreAccess, fallocate: Fallocate = os.posix_fallocate) -> int:
    """A new object of ``size`` bytes, space reserved up front; its descriptor.

    Raises FileExistsError when the name is taken (by this store's stale
    object or by someone else's: the caller opens it to tell which).
    ``posix_fallocate`` makes the kernel find every page now: a full /dev/shm
    raises here, with the numbers, instead of SIGBUS when a page is touched.
    """
    fd = os.open(path_of(name), _CREATE, access.file_mode(kind))
    try:
        access.apply(fd, kind)
        try:
            fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise SharedMemoryError(
                    f"{SHM_DIR} is full: {name} needs {size} bytes, {_free_bytes()} bytes are free "
                    "(grow /dev/shm, e.g. docker --shm-size, or reduce the flag data)"
                ) from None
            raise SharedMemoryError(f"cannot reserve {size} bytes for {name}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        os.unlink(path_of(name))
        raise
    return fd


def open_object(name: str, kind: str, access: StoreAccess, *, writable: bool = False) -> int:
    """Open an existing object of this store; its descriptor.

    FileNotFoundError when there is none; :class:`~.trust.Untrusted` (logged,
    recorded) when the object is not this store's: a link, not a regular
    file, another owner, or a write bit it must not have.
    """
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path_of(name), flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EACCES, errno.EPERM):
            # A symbolic link where an object should be, or an object this
            # account may not open: another account's 0600 file, squatting a
            # name (root is never refused, so only a non-root store meets it).
            # Either way not this store's: the check raises Untrusted, and
            # the caller skips the name as it skips any other foreign object.
            st = os.lstat(path_of(name))
            access.check(name, kind, st)
        raise
    try:
        access.check(name, kind, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_readonly(name: str, kind: str, access: StoreAccess, length: int | None = None) -> mmap.mmap:
    """Map an existing, trusted object read-only. Writing through it raises TypeError."""
    fd = open_object(name, kind, access)
    try:
        size = os.fstat(fd).st_size
        if length is None:
            length = size
        if length <= 0 or size < length:
            raise SnapshotError(f"{name} is {size} bytes, expected {length}")
        return mmap.mmap(fd, length, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def unlink_object(name: str, kind: str, access: StoreAccess) -> bool:
    """Remove an object of this store by name. One already gone, or one that
    is not this store's (refused and logged, left in place), is not an error.
    True when it was removed."""
    try:
        st = os.lstat(path_of(name))
    except FileNotFoundError:
        return False
    try:
        access.check(name, kind, st)
    except SharedMemoryError:
        return False
    try:
        os.unlink(path_of(name))
    except FileNotFoundError:
        return False
    return True


def kind_of(name: str) -> str:
    """What kind of object a store's name is (for the trust rule)."""
    suffix = name.rsplit(".", 2)
    last = suffix[-1]
    if last.startswith("ctl") or (last.isdigit() and suffix[-2].startswith("ctl")):
        return CONTROL
    if last.startswith("reg") or (last.isdigit() and suffix[-2].startswith("reg")):
        return REGISTRY
    if last.startswith("r"):
        return RING
    return SNAPSHOT


def remove_objects(names: list[str], access: StoreAccess) -> int:
    """Unlink each of these objects that is this store's (others are refused
    and left); how many were removed."""
    return sum(unlink_object(name, kind_of(name), access) for name in names)


def audit(names: StoreNames) -> list[Refusal]:
    """Every object under this store's names that the store would refuse
    (another account's, a link, a stray write bit): for ``featbit-shm status``."""
    found = []
    for name in names.all_objects():
        try:
            names.access.check(name, kind_of(name), os.lstat(path_of(name)), record=False)
        except Untrusted as exc:
            found.append(exc.refusal)
        except FileNotFoundError:
            continue
    return found
