"""Is a process still running? (for leader, owner, client and ring-owner checks)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs. A zombie -- exited, not yet reaped by its
    parent -- counts as dead: it will never write a heartbeat or an event
    again, and an app that never reaps an autostarted child must not keep
    a store's clients "alive" forever."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another uid
    return not _zombie(pid)


def pid_namespace() -> int:
    """This process's PID namespace: the inode of /proc/self/ns/pid (0 when
    unknown). A pid names the same process only to processes of the same
    namespace: containers of one pod see each other's only with
    shareProcessNamespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def is_sync_process(pid: int) -> bool:
    """Is ``pid`` a featbit_shm sync process of this account? (Checked before
    a candidate asks a leader to step down: never signal a recycled pid.)"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            command = fh.read()
        owner = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return False
    return owner == os.geteuid() and b"featbit_shm.sync" in command


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False  # no /proc (or it just went): trust kill()
    # "pid (comm) S ...": the state follows the last ')' (comm may hold any byte).
    end = stat.rfind(b")")
    return stat[end + 2 : end + 3] == b"Z"
