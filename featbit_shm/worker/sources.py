"""Where a client's flags come from: a view of one snapshot, or None (not ready).

Online (and offline with a shared store) the source is the host's
:class:`~featbit_shm.shm.reader.SnapshotReader`. Offline with data of the
process's own (a bootstrap file loaded by the client, or
``initialize_from_external_json``) it is a :class:`MemorySource`.
Evaluation is the same whatever the source.
"""

from __future__ import annotations

import threading
from typing import Protocol

from .._core.dataset import DataSet
from .._core.view import CompiledView


class FlagSource(Protocol):
    """Anything with ``current()``: the view to evaluate with, or None (not ready)."""

    def current(self) -> CompiledView | None: ...


class MemorySource:
    """A flag source held in this process (offline data, tests)."""

    def __init__(self) -> None:
        self.dataset = DataSet()
        self.view: CompiledView | None = None
        self._lock = threading.Lock()

    def current(self) -> CompiledView | None:
        return self.view

    def publish(self, dataset: DataSet) -> None:
        """Swap in a new data set; evaluations switch views atomically (R-13)."""
        with self._lock:
            self.dataset = dataset
            self.view = memory_view(dataset, (self.view.generation + 1) if self.view else 1, self.view)


def memory_view(dataset: DataSet, generation: int, previous: CompiledView | None = None) -> CompiledView:
    """A view of a data set held in this process."""

    def keys() -> list[str]:
        return [f["key"] for f in dataset.active_flags()]

    return CompiledView(generation, dataset.version, dataset.flag, dataset.segment, keys, previous, origin=dataset)
