"""The sync process: FeatBit's stream (or a file) into the shared-memory store.

See :mod:`featbit_shm.sync.process` for the theory of operation, and
:mod:`featbit_shm.sync.settings` for the FEATBIT_* variables.
"""

from .launcher import spawn_sync_process
from .process import SyncProcess
from .settings import SyncSettings

__all__ = ["SyncProcess", "SyncSettings", "spawn_sync_process"]
