"""fbclient's status API (``fbclient.status_types``, R-16, R-82, R-83), read from shared memory.

The state comes from the store's control block, written by the sync
process: INITIALIZING until its first committed sync, OK while it syncs,
INTERRUPTED while it reconnects -- or when no live sync process serves the
store (:meth:`~featbit_shm.shm.control.ControlBlock.leader_alive`: its pid is
gone, or its heartbeat is older than
:data:`~featbit_shm.shm.control.STALE_AFTER_S`) -- and OFF after a
rejection (4003) or a clean stop. Offline clients are OK at once (R-71).
A process that cannot map the store's newest generation (it keeps serving
an older one, e.g. after a uid switch) is INTERRUPTED with error type
``StaleWorker`` whatever the host's state: its own data is what it serves.
Reading it is a few memory loads: no socket, no thread.

Listeners (fbclient's ``add_listener``/``remove_listener``) are called with
the new :class:`State` when the state type changes. As with flag change
listeners, there is no thread: a change is noticed when this process next
reads the state, or at the store watch of its evaluations (about every
0.5 s of use); an idle process that must hear at once can call
:meth:`DataUpdateStatusProvider.start_watching`.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .shm.control import STALE_AFTER_S, SyncState

log = logging.getLogger("featbit_shm")


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

    # fbclient's factories (its status provider's own vocabulary).
    @staticmethod
    def intializing_state() -> State:  # sic: fbclient's spelling
        return State(StateType.INITIALIZING, time.time())

    @staticmethod
    def ok_state() -> State:
        return State(StateType.OK, time.time())

    @staticmethod
    def interrupted_state(error_type: str, message: str) -> State:
        return State(StateType.INTERRUPTED, time.time(), ErrorTrack(error_type, message))

    @staticmethod
    def normal_off_state() -> State:
        return State(StateType.OFF, time.time())

    @staticmethod
    def error_off_state(error_type: str, message: str) -> State:
        return State(StateType.OFF, time.time(), ErrorTrack(error_type, message))


class Health:
    """Is this process serving fresh flags? (``client.health()``; truthy when so).

    Healthy: the process has data, serves the host's newest generation, and
    a live sync process keeps the host fresh -- also while that process
    reconnects to FeatBit (the host then serves last-known flags, which is
    what every worker should do; failing every pod's readiness for a FeatBit
    outage would take the app down with it). Unhealthy: no data yet, no live
    sync process, this worker cannot map the newest generation, or the sync
    process stopped (rejected by FeatBit). ``reason`` says which.
    """

    __slots__ = ("ok", "reason", "state", "generation")

    def __init__(self, ok: bool, reason: str, state: State, generation: int) -> None:
        self.ok = ok
        self.reason = reason
        self.state = state
        self.generation = generation

    def __bool__(self) -> bool:
        return self.ok

    def to_json_dict(self) -> dict[str, Any]:
        track = self.state.error_track
        return {
            "ok": self.ok,
            "reason": self.reason,
            "state": self.state.state_type.value,
            "error": {"type": track.error_type, "message": track.message} if track else None,
            "generation": self.generation,
        }

    def __repr__(self) -> str:
        return f"Health(ok={self.ok}, reason={self.reason!r})"


def judge(state: State, ready: bool, generation: int) -> Health:
    """The health rule (see :class:`Health`)."""
    track = state.error_track
    if not ready:
        return Health(False, "no flag data yet" + (f": {track.message}" if track else ""), state, generation)
    if state.state_type is StateType.OK:
        return Health(True, "serving the host's current flags", state, generation)
    if state.state_type is StateType.INTERRUPTED and track is None:
        return Health(True, "the sync process is reconnecting to FeatBit; serving last-known flags", state, generation)
    return Health(False, track.message if track else state.state_type.value, state, generation)


_MAP = {
    SyncState.INITIALIZING: StateType.INITIALIZING,
    SyncState.OK: StateType.OK,
    SyncState.INTERRUPTED: StateType.INTERRUPTED,
    SyncState.OFF: StateType.OFF,
}


class DataUpdateStatusProvider:
    """``client.update_status_provider``."""

    def __init__(
        self,
        control: Callable[[], Any],
        *,
        offline: bool,
        ready: Callable[[], bool],
        version: Callable[[], int],
        started: float,
        behind: Callable[[], tuple[int, int, str, float] | None] = lambda: None,
    ) -> None:
        self._control = control  # () -> ControlBlock | None
        self._offline = offline
        self._ready = ready
        self._version = version
        self._started = started
        self._behind = behind  # SnapshotReader.behind
        self._lock = threading.Lock()
        self._listeners: list[Callable[[State], None]] = []
        self._notified: StateType | None = None
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()

    @property
    def current_state(self) -> State:
        state = self._state()
        if self._listeners:
            self._publish(state)
        return state

    def _state(self) -> State:
        if self._offline:
            return State(StateType.OK, self._started)
        lag = self._behind()
        if lag is not None:
            store, served, why, since = lag
            return State(
                StateType.INTERRUPTED,
                since,
                ErrorTrack("StaleWorker", f"this process serves generation {served} of {store}: {why}"),
            )
        block = self._control()
        if block is None:
            return State(
                StateType.INITIALIZING,
                self._started,
                ErrorTrack("NoSyncProcess", "no sync process has created the store"),
            )
        state = _MAP.get(block.state, StateType.OFF)
        since = block.state_since or self._started
        now = time.time()
        if state in (StateType.OK, StateType.INITIALIZING) and not block.leader_alive(now):
            # The one liveness rule: a dead or hung sync process keeps nothing fresh.
            age = block.heartbeat_age(now)
            why = (
                f"sync process silent for {age:.1f} s"
                if age > STALE_AFTER_S
                else f"sync process {block.leader_pid} is gone"
            )
            return State(StateType.INTERRUPTED, block.heartbeat or since, ErrorTrack("StaleHeartbeat", why))
        if state is StateType.OFF:
            return State(
                state, since, ErrorTrack("SyncStopped", "the sync process stopped (rejected by FeatBit, or shut down)")
            )
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

    # ------------------------------------------------------------------ listeners

    def add_listener(self, listener: Callable[[State], None]) -> None:
        """Call ``listener(state)`` when the state type changes (fbclient's API;
        see the module docstring for when a change is noticed)."""
        if not callable(listener):
            return
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)
            if self._notified is None:
                self._notified = self._state().state_type  # changes from now on

    def remove_listener(self, listener: Callable[[State], None]) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def poll(self) -> None:
        """Notice a state change now (the store watch calls this)."""
        if self._listeners:
            self._publish(self._state())

    def _publish(self, state: State) -> None:
        with self._lock:
            if state.state_type is self._notified:
                return
            self._notified = state.state_type
            listeners = tuple(self._listeners)
        for listener in listeners:
            try:
                listener(state)
            except Exception:
                log.exception("featbit_shm: an update status listener failed")

    def start_watching(self, interval: float = 0.5) -> None:
        """Opt in to a daemon thread that polls every ``interval`` seconds, for
        a process that must hear of changes while it evaluates nothing."""
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive():
                return
            self._stop_watching.clear()
            self._watcher = threading.Thread(
                target=self._watch, args=(interval,), name="featbit-shm-status", daemon=True
            )
            self._watcher.start()

    def stop_watching(self) -> None:
        self._stop_watching.set()

    def _watch(self, interval: float) -> None:
        while not self._stop_watching.wait(interval):
            self.poll()
