"""Who leads a store: the leader and standby lock files.

Every candidate tries the leader lock without blocking; the winner leads. A
loser tries the standby lock: the one that gets it waits on the leader
lock to take over the moment the leader dies (the kernel drops a dead
process's locks); every other candidate exits. See
:mod:`featbit_shm.sync.process` for what leading means. The lock files are
:class:`~featbit_shm.shm.locks.FileLock`\\ s in the account's lock directory
beside the shared objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..shm.locks import FileLock
from ..shm.names import StoreNames


class Election:
    """The leader and standby lock files of one store."""

    def __init__(self, names: StoreNames) -> None:
        self.leader = FileLock(names.lock_path, names.access)
        self.standby = FileLock(names.standby_lock_path, names.access)

    def try_lead(self) -> bool:
        return self.leader.acquire(0)

    def try_standby(self) -> bool:
        return self.standby.acquire(0)

    def wait_to_lead(self, stop: threading.Event, tick: Callable[[], None]) -> bool:
        while not stop.is_set():
            if self.leader.acquire(0.05, idle=tick):
                return True
        return False

    def release(self) -> None:
        for lock in (self.standby, self.leader):
            lock.release()
