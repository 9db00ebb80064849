"""The last user out removes a store: one rule for every server integration.

The gunicorn hooks (``on_exit``, and a worker outliving a SIGKILLed master)
and Celery's ``worker_shutdown`` stop the sync process they started, then
remove what is left of the store. That is right only when nobody else needs
the store: not while a sync process leads it (one under a supervisor, a
sidecar's, another server's, or one a worker started when healing the host),
and not while another live process is registered as its client. Removing a
store from under a running leader unlinks its control block and its leader
lock file: its workers lose the snapshots it keeps writing, and the next
candidate takes a new lock file and leads beside it.
"""

from __future__ import annotations

import os
import time

from .._runtime.processes import pid_alive
from ..shm.locks import FileLock, remove_lock_files
from ..shm.names import StoreNames
from ..shm.objects import remove_objects
from ..shm.reader import find_control
from ..shm.registry import Registry

__all__ = ["release_store"]


def release_store(names: StoreNames, *, wait: float = 3.0, me: int | None = None) -> str | None:
    """Remove every shared-memory object and lock file of the store, as its last user.

    Returns None when it was removed, else why it stays (for the caller's log).
    It stays when a sync process leads it (a live leader in the control
    block; or the leader lock still held after ``wait`` seconds: a standby
    taking over, or a leader being stopped), or when a live process other
    than ``me`` (default: this one) is registered as its client. Removal
    happens under the leader lock, so no sync process can start leading
    the store halfway through.
    """
    me = os.getpid() if me is None else me
    block, _refused = find_control(names)
    if block is not None and block.leader_alive(time.time()):
        return f"sync process {block.leader_pid} serves it and removes it when done"
    leader = FileLock(names.lock_path, names.access)
    if not leader.acquire(wait, poll=0.05):
        return "a sync process holds its leader lock"
    try:
        others = _other_clients(names, me)
        if others:
            return f"{len(others)} live process(es) of another server use it"
        remove_objects(names.all_objects(), names.access)
        remove_lock_files(names.lock_files, names.access)
        return None
    finally:
        leader.release()


def _other_clients(names: StoreNames, me: int) -> set[int]:
    registry = Registry(names)
    try:
        return registry.live_pids(pid_alive) - {me} if registry.attach(create=False) else set()
    finally:
        registry.close()
