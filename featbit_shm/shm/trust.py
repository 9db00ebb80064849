"""Whom a store trusts: the rule every object and lock file is checked against.

/dev/shm is shared by every account on the host, and anyone may create a
file there under any name. A store therefore trusts an object only when
``fstat`` of the open object says it is what this store itself would have
made: a regular file (opened with ``O_NOFOLLOW``, so never a link), owned by
the store's account, with no write bit for others and a group write bit only
where the design needs one. Anything else is *refused*: never read, never
adopted, never unlinked, and named in one clear log line and in
``featbit-shm status``; the writer picks a fresh name and carries on.

The store's account (:attr:`StoreAccess.owner`) is this process's effective
uid, or ``FEATBIT_SHM_STORE_UID`` for workers of a server that switches uid
(the server hooks set it to the master's uid before they fork). A store may
name a group (``FEATBIT_SHM_GROUP``): then snapshots and the control block are
readable by the group (never writable), and event rings and the registry are
writable by it, so workers running under another uid in that group can
evaluate and record events, and cannot forge flags.
"""

from __future__ import annotations

import collections
import grp
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from .._core.errors import ConfigError, SharedMemoryError
from .._runtime.environment import env_int, env_str
from .._runtime.notices import warn_limited

# What an object is, for the trust rule and for its creation mode.
CONTROL: Final = "control block"
SNAPSHOT: Final = "snapshot"
REGISTRY: Final = "registry"
RING: Final = "event ring"
LOCK: Final = "lock file"
DIRECTORY: Final = "lock directory"
WORKER_WRITABLE: Final = frozenset({REGISTRY, RING, LOCK})


@dataclass(frozen=True)
class Refusal:
    """An object this process would not trust, and why."""

    name: str
    kind: str
    owner: int
    mode: int
    reason: str

    def describe(self) -> str:
        return f"{self.kind} {self.name} (owner uid {self.owner}, mode {self.mode:04o}): {self.reason}"


class Untrusted(SharedMemoryError):
    """An object exists under a name this store uses, and it is not ours."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(f"refusing {refusal.describe()}")
        self.refusal = refusal


#: The refusals this process made, newest last (for status and tests).
refusals: collections.deque[Refusal] = collections.deque(maxlen=64)


def refuse(refusal: Refusal) -> Untrusted:
    """Record and log a refusal (once a minute per object); the error to raise."""
    refusals.append(refusal)
    warn_limited(
        f"refused {refusal.name}",
        f"featbit_shm: refusing {refusal.describe()}; another account may be trying to feed or squat this "
        "store, or a server was misconfigured. The object is not read, adopted or removed.",
        level=logging.ERROR,
    )
    return Untrusted(refusal)


@dataclass(frozen=True)
class StoreAccess:
    """The account a store belongs to, and the group its workers may share it with."""

    owner: int = field(default_factory=os.geteuid)
    group: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StoreAccess:
        owner = env_int("FEATBIT_SHM_STORE_UID", env)
        return cls(os.geteuid() if owner is None else owner, group_id(env_str("FEATBIT_SHM_GROUP", env)))

    def file_mode(self, kind: str) -> int:
        """The mode this store creates an object of ``kind`` with."""
        if self.group is None:
            return 0o600
        return 0o660 if kind in WORKER_WRITABLE else 0o640

    def directory_mode(self) -> int:
        return 0o700 if self.group is None else 0o1770  # group: workers create lock files, sticky

    def check(self, name: str, kind: str, st: os.stat_result, *, record: bool = True) -> None:
        """Raise :class:`Untrusted` unless ``st`` is an object of this store
        (with ``record``, the refusal is also logged and kept in :data:`refusals`)."""
        mode = stat.S_IMODE(st.st_mode)
        if kind == DIRECTORY:
            reason = None if stat.S_ISDIR(st.st_mode) else "not a directory"
        else:
            reason = None if stat.S_ISREG(st.st_mode) else "not a regular file"
        ours = st.st_uid == self.owner
        # A worker of a server that switches uid made it, in the store's group.
        shared = self.group is not None and st.st_gid == self.group and kind in WORKER_WRITABLE
        if reason is None and not ours and not shared:
            reason = f"owned by uid {st.st_uid}, expected {self.owner}"
        if reason is None and mode & 0o002:
            reason = "writable by every account"
        # Group write: only where workers write (rings, registry, locks, the
        # lock directory), and only on what the store's owner or group holds.
        if reason is None and mode & 0o020 and not (kind in WORKER_WRITABLE | {DIRECTORY} and (ours or shared)):
            reason = "writable by its group"
        if reason is not None:
            refusal = Refusal(name, kind, st.st_uid, mode, reason)
            raise refuse(refusal) if record else Untrusted(refusal)

    def widen(self, fd: int, kind: str) -> None:
        """Give an existing object of this account the store's group and mode
        when a group is configured and the object predates it (a server that
        switches uid, started after a client made the object). Never narrows:
        without a group nothing changes."""
        if self.group is None:
            return
        st = os.fstat(fd)
        wanted = self.file_mode(kind) if kind != DIRECTORY else self.directory_mode()
        if st.st_uid == os.geteuid() and (st.st_gid != self.group or stat.S_IMODE(st.st_mode) != wanted):
            self.apply(fd, kind)

    def apply(self, fd: int, kind: str) -> None:
        """Give a just-created object its group and mode (the umask may have
        narrowed the mode it was created with)."""
        if self.group is not None:
            os.fchown(fd, -1, self.group)
        os.fchmod(fd, self.file_mode(kind) if kind != DIRECTORY else self.directory_mode())


def group_id(value: str) -> int | None:
    """``FEATBIT_SHM_GROUP``: a group name or number; empty is no group."""
    if not value:
        return None
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise ConfigError(f"FEATBIT_SHM_GROUP={value!r} names no group on this host") from None
