"""Analytics events: per-worker shared-memory rings drained by the sync process.

See :mod:`featbit_shm.events.ring` (theory of operation),
:mod:`featbit_shm.events.recorder` (the worker side) and
:mod:`featbit_shm.events.pump` (the sync-process side).
"""
