"""featbit_shm: FeatBit feature flags for pre-fork Python servers.

A drop-in for the official SDK (``fbclient``): change the import, keep the
calls. See README.md and MIGRATING.md.
"""

from __future__ import annotations

from ._core.results import ReasonKind
from ._singleton import get, set_config
from .client import FBClient
from .common_types import AllFlagStates, EvalDetail, FlagState
from .config import Config
from .errors import ConfigError, DataError, FeatbitShmError, SharedMemoryError
from .status_types import Health, State, StateType

__version__ = "0.1.0"

#: Seconds ``get()`` waits for data when it builds the client (fbclient's default).
start_wait: float = 15

__all__ = [
    "AllFlagStates",
    "Config",
    "ConfigError",
    "DataError",
    "EvalDetail",
    "FBClient",
    "FeatbitShmError",
    "FlagState",
    "Health",
    "ReasonKind",
    "SharedMemoryError",
    "State",
    "StateType",
    "__version__",
    "get",
    "set_config",
    "start_wait",
]
