"""Names of a store's shared-memory objects and lock files.

A store's name tag derives from a hash of (env secret, namespace): the
secret itself never appears in a name, in shared memory, or in a log (R-77).
Every object name also carries the uid of the account the store belongs to
(``/fbshm.<uid>.<tag>.<kind>``), so two accounts on one host never share a
name; and since anyone can create a file under any name in /dev/shm, the
names that must be found again -- the control block and the registry -- have
fallback slots (``.ctl``, ``.ctl.1``, ...): when another account squats one,
the store's writer takes the next, and readers take the first one they trust
(:mod:`.trust`).

The tag also carries the store's formats (:mod:`.formats`): two releases of
featbit_shm whose shared-memory formats differ get two stores, two leader
locks and two sync processes, never one each can only half read. The
environment's own hash (:attr:`StoreNames.environment`, the same in every
release) names what outlives a release: the warm-start file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from .formats import STORE_FORMAT
from .locks import runtime_directory
from .trust import StoreAccess

PREFIX = "fbshm."
SHM_DIR = "/dev/shm"
SLOTS = 8  # names tried for the control block and for the registry


@dataclass(frozen=True)
class StoreNames:
    """Every name one store uses. Build it with :meth:`for_env`."""

    tag: str  # the hash of the environment and the formats; safe to log
    access: StoreAccess = field(default_factory=StoreAccess)
    environment: str = ""  # the hash of the environment alone (for_env sets it); safe to log

    @classmethod
    def for_env(cls, env_secret: str, namespace: str = "default", access: StoreAccess | None = None) -> StoreNames:
        environment = hashlib.sha256(b"featbit-shm/1\0" + env_secret.encode() + b"\0" + namespace.encode()).hexdigest()
        store = hashlib.sha256(f"{environment}\0{STORE_FORMAT}".encode()).hexdigest()
        return cls(store[:20], access if access is not None else StoreAccess.from_env(), environment[:20])

    @property
    def base(self) -> str:
        return f"/{PREFIX}{self.access.owner}.{self.tag}"

    @property
    def control(self) -> str:
        """The control block's first-choice name (see :attr:`controls`)."""
        return f"{self.base}.ctl"

    @property
    def controls(self) -> list[str]:
        """The names the control block may have, in the order they are tried."""
        return _slots(self.control)

    def root(self, generation: int) -> str:
        """The root object of a snapshot generation."""
        return f"{self.base}.g{generation}"

    def chunk(self, chunk_id: int) -> str:
        """A chunk of entity blobs (its id is the generation that wrote it)."""
        return f"{self.base}.c{chunk_id}"

    def ring(self, ring_id: int) -> str:
        """A worker's event ring."""
        return f"{self.base}.r{ring_id}"

    @property
    def registry(self) -> str:
        """The table of claimed event rings, first-choice name (see :attr:`registries`)."""
        return f"{self.base}.reg"

    @property
    def registries(self) -> list[str]:
        return _slots(self.registry)

    def all_objects(self) -> list[str]:
        """Every object under this store's names now in /dev/shm: snapshots,
        rings, registry and control block (ours or squatted)."""
        found = self.existing("gcr")
        for name in (*self.registries, *self.controls):
            if os.path.lexists(SHM_DIR + name):
                found.append(name)
        return found

    @property
    def lock_path(self) -> str:
        """The leader lock file; the standby and registry locks are beside it."""
        return os.path.join(runtime_directory(self.access), f"{self.tag}.lock")

    @property
    def standby_lock_path(self) -> str:
        """The lock a waiting standby sync process holds."""
        return self.lock_path + ".standby"

    @property
    def registry_lock_path(self) -> str:
        """The lock that serialises claims in the ring registry."""
        return self.lock_path + ".registry"

    @property
    def lock_files(self) -> list[str]:
        """Every lock file of this store, the leader lock last."""
        return [self.registry_lock_path, self.standby_lock_path, self.lock_path]

    def existing(self, kind: str = "gc") -> list[str]:
        """This store's numbered objects now in /dev/shm, as names.

        ``kind`` picks roots (``g``), chunks (``c``), event rings (``r``), or
        several (``gc``, the default: the snapshot objects).
        """
        try:
            entries = os.listdir(SHM_DIR)
        except OSError:
            return []
        base = self.base[1:]
        prefixes = tuple(f"{base}.{k}" for k in kind)
        return sorted("/" + e for e in entries if e.startswith(prefixes) and e[len(prefixes[0]) :].isdigit())


def _slots(first: str) -> list[str]:
    """A name and its fallbacks, in the order they are tried."""
    return [first] + [f"{first}.{i}" for i in range(1, SLOTS)]
