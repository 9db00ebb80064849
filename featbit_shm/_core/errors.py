"""The one exception tree of featbit_shm.

Every error says whose fault it was:

* :class:`ConfigError` -- the caller's configuration or arguments (fix your code);
* :class:`DataError` -- data that came from FeatBit or a bootstrap file (fix the data);
* :class:`SharedMemoryError` -- our own shared memory on this host (look at /dev/shm).

``ConfigError`` subclasses ``ValueError`` because the official SDK raises
``ValueError`` for the same mistakes, so ``except ValueError`` keeps working
after a migration.
"""

from __future__ import annotations


class FeatbitShmError(Exception):
    """Base class of every error raised by featbit_shm."""


class ConfigError(FeatbitShmError, ValueError):
    """The caller's configuration or arguments are invalid."""


class DataError(FeatbitShmError):
    """Flag data from FeatBit or a bootstrap file could not be used."""


class SharedMemoryError(FeatbitShmError):
    """The shared-memory snapshot store failed on this host."""
