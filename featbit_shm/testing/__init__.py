"""Public test helpers, used by featbit_shm's own tests too.

* :mod:`.builders` -- FeatBit wire JSON for flags, segments, conditions and
  data-sync documents;
* :mod:`.server` -- ``FeatBitStandIn``, a FeatBit evaluation server on
  loopback that speaks the real wire protocol (websocket data-sync with the
  connection token, pushes, close codes, the insight endpoint), for tests
  of a whole host: sync process, workers, events;
* :mod:`.proxy` -- ``ForwardProxy``, an HTTP proxy on loopback;
* :class:`TestData` -- flags for unit tests, in this process, updatable
  (no shared memory, no subprocess).
"""

from . import builders
from .testdata import TestData

__all__ = ["TestData", "builders"]
