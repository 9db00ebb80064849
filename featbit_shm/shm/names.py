"""Names of a store's shared-memory objects and lock file.

Names derive from a hash of (env secret, namespace): the secret itself never
appears in a name, in shared memory, or in a log (R-77). Offline stores
(no secret) are told apart by namespace alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .locks import runtime_directory

PREFIX = "fbshm."
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class StoreNames:
    """Every name one store uses. Build it with :meth:`for_env`."""

    tag: str  # the hash; safe to log

    @classmethod
    def for_env(cls, env_secret: str, namespace: str = "default") -> StoreNames:
        digest = hashlib.sha256(b"featbit-shm/1\0" + env_secret.encode() + b"\0" + namespace.encode()).hexdigest()
        return cls(digest[:20])

    @property
    def control(self) -> str:
        return f"/{PREFIX}{self.tag}.ctl"

    def root(self, generation: int) -> str:
        """The root object of a snapshot generation."""
        return f"/{PREFIX}{self.tag}.g{generation}"

    def chunk(self, chunk_id: int) -> str:
        """A chunk of entity blobs (its id is the generation that wrote it)."""
        return f"/{PREFIX}{self.tag}.c{chunk_id}"

    def ring(self, ring_id: int) -> str:
        """A worker's event ring."""
        return f"/{PREFIX}{self.tag}.r{ring_id}"

    @property
    def registry(self) -> str:
        """The table of claimed event rings."""
        return f"/{PREFIX}{self.tag}.reg"

    def all_objects(self) -> list[str]:
        """Every object of this store now in /dev/shm: snapshots, rings, registry, control."""
        found = self.existing("gcr")
        for name in (self.registry, self.control):
            if os.path.exists(SHM_DIR + name):
                found.append(name)
        return found

    @property
    def lock_path(self) -> str:
        return os.path.join(runtime_directory(), f"{PREFIX}{self.tag}.lock")

    def existing(self, kind: str = "gc") -> list[str]:
        """This store's snapshot objects now in /dev/shm (Linux), as shm names.

        ``kind`` picks roots (``g``), chunks (``c``), event rings (``r``), or
        several (``gc``, the default: the snapshot objects).
        """
        try:
            entries = os.listdir(SHM_DIR)
        except OSError:
            return []
        prefixes = tuple(f"{PREFIX}{self.tag}.{k}" for k in kind)
        return sorted("/" + e for e in entries if e.startswith(prefixes) and e[len(prefixes[0]) :].isdigit())
