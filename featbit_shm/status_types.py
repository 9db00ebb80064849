"""fbclient's status API (``fbclient.status_types``, R-16, R-82, R-83), read from shared memory.

The state comes from the store's control block, written by the sync
process: INITIALIZING until its first committed sync, OK while it syncs,
INTERRUPTED while it reconnects -- or when no live sync process serves the
store (:meth:`~featbit_shm.shm.control.ControlBlock.leader_alive`: its pid is
gone, or its heartbeat is older than
:data:`~featbit_shm.shm.control.STALE_AFTER_S`) -- and OFF after a
rejection (4003) or a clean stop. Offline clients are OK at once (R-71).
Reading it is a few memory loads: no socket, no thread.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

from .shm.control import STALE_AFTER_S, SyncState


class StateType(enum.Enum):
    INITIALIZING = "INITIALIZING"
    OK = "OK"
    INTERRUPTED = "INTERRUPTED"
    OFF = "OFF"


class ErrorTrack:
    """Why the state is what it is (fbclient's ``ErrorTrack``)."""

    __slots__ = ("error_type", "message")

    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message

    def __repr__(self) -> str:
        return f"ErrorTrack({self.error_type!r}, {self.message!r})"


class State:
    """``state_type``, ``state_since`` (epoch seconds) and ``error_track``."""

    __slots__ = ("state_type", "state_since", "error_track")

    def __init__(self, state_type: StateType, state_since: float, error_track: ErrorTrack | None = None) -> None:
        self.state_type = state_type
        self.state_since = state_since
        self.error_track = error_track

    def __repr__(self) -> str:
        return f"State({self.state_type.name}, since={self.state_since:.3f}, error={self.error_track!r})"


_MAP = {
    SyncState.INITIALIZING: StateType.INITIALIZING,
    SyncState.OK: StateType.OK,
    SyncState.INTERRUPTED: StateType.INTERRUPTED,
    SyncState.OFF: StateType.OFF,
}


class DataUpdateStatusProvider:
    """``client.update_status_provider``."""

    def __init__(self, control: Callable[[], Any], *, offline: bool, ready: Callable[[], bool], version: Callable[[], int], started: float) -> None:
        self._control = control  # () -> ControlBlock | None
        self._offline = offline
        self._ready = ready
        self._version = version
        self._started = started

    @property
    def current_state(self) -> State:
        if self._offline:
            return State(StateType.OK, self._started)
        block = self._control()
        if block is None:
            return State(StateType.INITIALIZING, self._started, ErrorTrack("NoSyncProcess", "no sync process has created the store"))
        state = _MAP.get(block.state, StateType.OFF)
        since = block.state_since or self._started
        now = time.time()
        if state in (StateType.OK, StateType.INITIALIZING) and not block.leader_alive(now):
            # The one liveness rule: a dead or hung sync process keeps nothing fresh.
            age = block.heartbeat_age(now)
            why = f"sync process silent for {age:.1f} s" if age > STALE_AFTER_S else f"sync process {block.leader_pid} is gone"
            return State(StateType.INTERRUPTED, block.heartbeat or since, ErrorTrack("StaleHeartbeat", why))
        if state is StateType.OFF:
            return State(state, since, ErrorTrack("SyncStopped", "the sync process stopped (rejected by FeatBit, or shut down)"))
        return State(state, since)

    @property
    def initialized(self) -> bool:
        """True once this process has data to evaluate (never after a bare rejection, G-1)."""
        return self._ready()

    @property
    def latest_version(self) -> int:
        """The data version (max updatedAt, ms) this process evaluates from."""
        return self._version()

    def wait_for_OKState(self, timeout: float = 0) -> bool:
        """True once OK; False on OFF or when ``timeout`` (> 0) runs out; ``timeout <= 0`` waits for ever."""
        deadline = time.monotonic() + timeout if timeout > 0 else float("inf")
        while True:
            state = self.current_state.state_type
            if state is StateType.OK:
                return True
            if state is StateType.OFF or time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
