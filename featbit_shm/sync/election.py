"""Who leads a store: the leader and standby lock files.

Every candidate tries the leader lock without blocking; the winner leads. A
loser tries the standby lock: the one that gets it blocks on the leader
lock to take over the moment the leader dies (the kernel drops a dead
process's locks); every other candidate exits. See
:mod:`featbit_shm.sync.process` for what leading means.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import filelock

from ..shm.locks import ensure_directory
from ..shm.names import StoreNames


class Election:
    """The leader and standby lock files of one store."""

    def __init__(self, names: StoreNames) -> None:
        path = names.lock_path
        ensure_directory(path)
        self.leader = filelock.FileLock(path, thread_local=False)
        self.standby = filelock.FileLock(path + ".standby", thread_local=False)

    def try_lead(self) -> bool:
        try:
            self.leader.acquire(timeout=0)
            return True
        except filelock.Timeout:
            return False

    def try_standby(self) -> bool:
        try:
            self.standby.acquire(timeout=0)
            return True
        except filelock.Timeout:
            return False

    def wait_to_lead(self, stop: threading.Event, tick: Callable[[], None]) -> bool:
        while not stop.is_set():
            try:
                self.leader.acquire(timeout=0.05)
                return True
            except filelock.Timeout:
                tick()
        return False

    def release(self) -> None:
        for lock in (self.standby, self.leader):
            if lock.is_locked:
                lock.release(force=True)
