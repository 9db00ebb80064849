"""The version of every shared-memory format a store uses, in one place.

A store's names carry all of them (:mod:`.names`), so two featbit_shm
releases whose formats differ never meet in one store on one host -- a
blue/green deploy, two virtualenvs, a rolling upgrade. Each release's
workers elect their own sync process and follow FeatBit through it, rather
than waiting on a leader whose snapshots they cannot read (promise 1).

Bump the number of a format whenever its bytes change meaning; a test
(tests/test_shm_store.py) checks that each number here is the one its
module reads and writes.
"""

from __future__ import annotations

from typing import Final

from .._core.snapshot import LAYOUT as SNAPSHOT_LAYOUT

CONTROL_LAYOUT: Final = 2  # control.py: the control block page (2: the retired rings' event counts)
RING_LAYOUT: Final = 2  # ring.py: an event ring's header, and the records in it (_core.records)
REGISTRY_LAYOUT: Final = 1  # registry.py: the table of claimed rings

STORE_FORMAT: Final = f"snapshot {SNAPSHOT_LAYOUT}, control {CONTROL_LAYOUT}, ring {RING_LAYOUT}, registry {REGISTRY_LAYOUT}"
