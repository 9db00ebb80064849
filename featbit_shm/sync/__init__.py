"""The sync process: FeatBit's stream (or a file) into the shared-memory store.

What runs in the sync process, and only there: the election
(:mod:`.election`), the data sources (:mod:`.sources`), the event pump
(:mod:`.pump`) and the process lifecycle (:mod:`.process`, the theory of
operation). :mod:`.launcher` starts one as a fresh interpreter;
:mod:`.settings` reads its FEATBIT_* variables. Importing this package
imports only those two light modules, so an app process that may start a
sync process pays nothing for the websocket client.
"""

from .launcher import spawn_sync_process, start_detached, stop_sync_process
from .settings import SyncSettings

__all__ = ["SyncSettings", "spawn_sync_process", "start_detached", "stop_sync_process"]
