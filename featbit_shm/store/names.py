"""Names of a store's shared-memory objects and lock file.

Names derive from a hash of (env secret, namespace): the secret itself never
appears in a name, in shared memory, or in a log (R-77). Offline stores
(no secret) are told apart by namespace alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

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

    def snapshot(self, generation: int) -> str:
        return f"/{PREFIX}{self.tag}.g{generation}"

    @property
    def snapshot_prefix(self) -> str:
        return f"{PREFIX}{self.tag}.g"

    @property
    def lock_path(self) -> str:
        base = os.environ.get("FEATBIT_SHM_RUNTIME_DIR") or os.path.join(os.environ.get("TMPDIR", "/tmp"), "featbit-shm")
        return os.path.join(base, f"{PREFIX}{self.tag}.lock")

    def existing_snapshots(self) -> list[str]:
        """Snapshot objects of this store now in /dev/shm (Linux), as shm names."""
        try:
            entries = os.listdir(SHM_DIR)
        except OSError:
            return []
        return sorted("/" + e for e in entries if e.startswith(self.snapshot_prefix))
