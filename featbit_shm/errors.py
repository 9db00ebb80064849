"""The exception tree of featbit_shm (defined in :mod:`featbit_shm._core.errors`).

* :class:`ConfigError` -- the caller's configuration or arguments (fix your code);
* :class:`DataError` -- data that came from FeatBit or a bootstrap file (fix the data);
* :class:`SharedMemoryError` -- our own shared memory on this host (look at /dev/shm).
"""

from ._core.errors import ConfigError, DataError, FeatbitShmError, SharedMemoryError

__all__ = ["ConfigError", "DataError", "FeatbitShmError", "SharedMemoryError"]
