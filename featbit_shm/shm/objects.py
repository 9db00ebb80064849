"""Creating, opening and removing shared-memory objects: the calls every object kind shares.

Every object is created exclusively (``O_CREAT | O_EXCL``) with its space
reserved by ``posix_fallocate``, so a full /dev/shm is a clear
:class:`~featbit_shm.errors.SharedMemoryError` when the object is made,
never a SIGBUS when a page is first touched.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable

import posix_ipc

from .._core.errors import SharedMemoryError
from .._core.snapshot import SnapshotError
from .names import SHM_DIR

Fallocate = Callable[[int, int, int], None]


def _free_bytes() -> int:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def create_object(name: str, size: int, *, mode: int, gid: int | None, fallocate: Fallocate) -> posix_ipc.SharedMemory:
    """A new shared-memory object of ``size`` bytes, space reserved up front.

    ``posix_fallocate`` makes the kernel find every page now: a full /dev/shm
    raises here, with the numbers, instead of SIGBUS when a page is touched.
    """
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=0)
    try:
        try:
            fallocate(shm.fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise SharedMemoryError(
                    f"{SHM_DIR} is full: {name} needs {size} bytes, {_free_bytes()} bytes are free "
                    "(grow /dev/shm, e.g. docker --shm-size, or reduce the flag data)"
                ) from None
            raise SharedMemoryError(f"cannot reserve {size} bytes for {name}: {exc.strerror}") from None
        if gid is not None:
            os.fchown(shm.fd, -1, gid)
        # fchmod: the umask may have narrowed the mode given to shm_open.
        os.fchmod(shm.fd, mode)
    except BaseException:
        shm.close_fd()
        shm.unlink()
        raise
    return shm


def map_readonly(name: str, length: int | None = None) -> mmap.mmap:
    """Map an existing object read-only. Writing through it raises TypeError."""
    shm = posix_ipc.SharedMemory(name, 0, read_only=True)
    try:
        size = os.fstat(shm.fd).st_size
        if length is None:
            length = size
        if length <= 0 or size < length:
            raise SnapshotError(f"{name} is {size} bytes, expected {length}")
        return mmap.mmap(shm.fd, length, prot=mmap.PROT_READ)
    finally:
        shm.close_fd()


def unlink_object(name: str) -> None:
    """Remove an object by name; one already gone is not an error."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass
