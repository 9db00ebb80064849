"""Flag change listeners: fbclient's ``flag_tracker``, without a thread (R-80, R-88).

fbclient hears of changes on its websocket thread and calls listeners from a
broadcaster thread. A featbit_shm worker has neither: the sync process
publishes generations into shared memory and the worker maps them. So the
worker notices a new generation when it next *touches* the client (any
evaluation, ``initialize``, ``is_flag_known``, ...): the first touch after a
change computes what changed since the generation the listeners last saw
and calls them, in registration order, on the touching thread, before the
touch returns. An idle process that must hear of changes at once can opt in
to a watcher thread (:meth:`FlagTracker.start_watching`); nothing else ever
starts one.

What changed is a difference of two generations (see
:mod:`featbit_shm._core.changes`): a notice for every flag whose entry
changed, plus every flag whose rules reference a changed segment. Unchanged
flags are not notified, even in a full sync (fbclient notifies every key).

Listener errors are logged and contained: the next listener still runs, and
the evaluation that triggered the dispatch is unaffected. Evaluations made
for value listeners record no events (they are not user traffic).

Nothing here costs anything until the first listener is added: the client's
flag source is wrapped only then.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from ._core.user import InvalidUser, make_user
from ._core.view import CompiledView
from ._runtime.notices import warn_limited
from .worker.sources import FlagSource

log = logging.getLogger("featbit_shm")

FLAG_CHANGE_NOTICE_TYPE = "flag_change_notice"
_MAX_ROUNDS = 8  # generations dispatched back to back by one touch
_trackers: weakref.WeakSet[FlagTracker] = weakref.WeakSet()


class FlagChangedNotice:
    """One flag that may evaluate differently now (fbclient's notice)."""

    __slots__ = ("_flag_key",)

    def __init__(self, flag_key: str) -> None:
        self._flag_key = flag_key

    @property
    def notice_type(self) -> str:
        return FLAG_CHANGE_NOTICE_TYPE

    @property
    def flag_key(self) -> str:
        return self._flag_key

    def __repr__(self) -> str:
        return f"FlagChangedNotice({self._flag_key!r})"


class FlagChangedListener(ABC):
    """Subclass and implement :meth:`on_flag_change` (fbclient's interface)."""

    @abstractmethod
    def on_flag_change(self, notice: FlagChangedNotice) -> None: ...


Evaluate = Callable[[str, dict[str, Any], Any], Any]


class FlagValueChangedListener(FlagChangedListener):
    """Calls ``fn(key, old, new)`` when the flag's value for one user changes."""

    def __init__(self, flag_key: str, user: dict[str, Any], evaluate: Evaluate, fn: Callable[[str, Any, Any], None]) -> None:
        self._flag_key = flag_key
        self._user = user
        self._evaluate = evaluate
        self._fn = fn
        self._value = evaluate(flag_key, user, None)  # the value at registration

    def on_flag_change(self, notice: FlagChangedNotice) -> None:
        if notice.flag_key != self._flag_key:
            return
        new = self._evaluate(self._flag_key, self._user, None)
        old = self._value
        if new != old or type(new) is not type(old):
            self._value = new
            self._fn(self._flag_key, old, new)


class FlagValueMaybeChangedListener(FlagChangedListener):
    """Calls ``fn(key, latest)`` whenever the flag's configuration changed."""

    def __init__(self, flag_key: str, user: dict[str, Any], evaluate: Evaluate, fn: Callable[[str, Any], None]) -> None:
        self._flag_key = flag_key
        self._user = user
        self._evaluate = evaluate
        self._fn = fn

    def on_flag_change(self, notice: FlagChangedNotice) -> None:
        if notice.flag_key == self._flag_key:
            self._fn(self._flag_key, self._evaluate(self._flag_key, self._user, None))


class TrackingSource:
    """A flag source that tells the tracker when the generation changed."""

    __slots__ = ("inner", "_tracker", "seen")

    def __init__(self, inner: FlagSource, tracker: FlagTracker) -> None:
        self.inner = inner
        self._tracker = tracker
        self.seen: CompiledView | None = inner.current()  # listeners start from here

    def current(self) -> CompiledView | None:
        view = self.inner.current()
        if view is not self.seen:
            self._tracker._dispatch(self)
        return view


class FlagTracker:
    """Registers flag change listeners for one client (fbclient's ``FlagTracker``).

    Obtain it as ``client.flag_tracker``; never construct it yourself.
    """

    def __init__(self, evaluate: Evaluate, install: Callable[[FlagTracker], TrackingSource]) -> None:
        self._evaluate = evaluate
        self._install = install  # wraps the client's source; returns the wrapper
        self._source: TrackingSource | None = None
        self._listeners: list[FlagChangedListener] = []
        self._lock = threading.Lock()  # guards _listeners and _source
        self._dispatching = threading.Lock()  # one dispatch at a time, never waited on
        self._watch_interval: float | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watcher_pid = 0
        self.dispatched = 0  # generations dispatched (for tests and status)
        self.closed = False
        _trackers.add(self)

    # ------------------------------------------------------------------ registration

    def add_flag_changed_listener(self, listener: FlagChangedListener) -> FlagChangedListener:
        """Call ``listener.on_flag_change(notice)`` for every changed flag."""
        if not isinstance(listener, FlagChangedListener):
            raise ValueError("listener must be a FlagChangedListener")
        self._ensure_installed()
        with self._lock:
            self._listeners.append(listener)
        return listener

    def _ensure_installed(self) -> None:
        """Start tracking generations (the first listener or watcher does this)."""
        with self._lock:
            if self._source is None:
                self._source = self._install(self)

    def add_flag_value_changed_listener(
        self, flag_key: str, user: dict[str, Any], flag_value_changed_fn: Callable[[str, Any, Any], None]
    ) -> FlagValueChangedListener:
        """Call ``fn(key, old, new)`` only when this flag's value for ``user`` changes.

        The flag is evaluated now, to know the value changes start from.
        """
        self._check(flag_key, user, flag_value_changed_fn)
        self._ensure_installed()  # before the first evaluation: no change slips between them
        listener = FlagValueChangedListener(flag_key, user, self._evaluate, flag_value_changed_fn)
        self.add_flag_changed_listener(listener)
        return listener

    def add_flag_value_maybe_changed_listener(
        self, flag_key: str, user: dict[str, Any], flag_value_maybe_changed_fn: Callable[[str, Any], None]
    ) -> FlagValueMaybeChangedListener:
        """Call ``fn(key, latest_value)`` whenever this flag's configuration changes."""
        self._check(flag_key, user, flag_value_maybe_changed_fn)
        self._ensure_installed()
        listener = FlagValueMaybeChangedListener(flag_key, user, self._evaluate, flag_value_maybe_changed_fn)
        self.add_flag_changed_listener(listener)
        return listener

    def remove_flag_change_notifier(self, listener: FlagChangedListener) -> None:
        """Stop notifying ``listener`` (no error if it was not registered)."""
        with self._lock:
            self._listeners = [x for x in self._listeners if x is not listener]

    @staticmethod
    def _check(flag_key: Any, user: Any, fn: Any) -> None:
        if not isinstance(flag_key, str) or not flag_key:
            raise ValueError("flag_key must be a non-empty string")
        try:
            make_user(user)
        except InvalidUser as exc:
            raise ValueError(f"invalid user: {exc}") from None
        if not callable(fn):
            raise ValueError("the listener function must be callable")

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, source: TrackingSource) -> None:
        """Tell listeners what changed since the generation they last saw.

        Runs on whichever thread touched the client first after a change.
        Never blocks: when another thread is dispatching (or a listener
        touches the client from inside a dispatch) the touch just returns
        and the dispatch in progress picks the new generation up.
        """
        if self.closed or not self._dispatching.acquire(blocking=False):
            return
        try:
            for _ in range(_MAX_ROUNDS):
                view = source.inner.current()
                old = source.seen
                if view is old:
                    return
                source.seen = view  # listeners' own touches now see no change
                if view is None:
                    continue
                try:
                    changes = view.changes_since(old)
                except Exception as exc:  # noqa: BLE001 - a damaged snapshot never breaks evaluation
                    warn_limited("diff", f"featbit_shm: cannot tell what changed in generation {view.generation}: {exc}")
                    continue
                self.dispatched += 1
                if changes.flags:
                    self._notify(sorted(changes.flags))
        finally:
            self._dispatching.release()

    def _notify(self, keys: list[str]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for key in keys:
            if self.closed:  # a listener stopped the client; no callback starts after that
                return
            notice = FlagChangedNotice(key)
            for listener in listeners:
                try:
                    listener.on_flag_change(notice)
                except Exception:  # errors isolated per subscriber
                    log.exception("featbit_shm: flag change listener %r failed on %r", listener, key)

    def poll(self) -> None:
        """Dispatch a pending change now (what a touch of the client does)."""
        source = self._source
        if source is not None:
            source.current()

    # ------------------------------------------------------------------ watcher (opt-in)

    def start_watching(self, interval: float = 0.25) -> None:
        """Opt in to a daemon thread that looks for changes every ``interval`` s,
        so listeners fire even while the process does not touch the client.

        Threads do not survive ``fork()``: call this in each worker (gunicorn's
        ``post_fork``), not in the master. A watcher started before a fork
        is reported loudly in the child, where listeners then fire on touch.
        """
        if not interval > 0:
            raise ValueError("interval must be positive")
        self._ensure_installed()
        with self._lock:
            if self._watcher is not None and self._watcher.is_alive() and self._watcher_pid == os.getpid():
                self._watch_interval = interval
                return
            self._watch_interval = interval
            self._watch_stop = threading.Event()
            self._watcher_pid = os.getpid()
            self._watcher = threading.Thread(target=self._watch, args=(self._watch_stop,), name="featbit-shm-flag-watcher", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        """No callback starts from now on (R-79); the client's stop() calls this."""
        self.closed = True
        self.stop_watching()

    def stop_watching(self, timeout: float = 1.0) -> None:
        """Stop the watcher thread, if one runs (bounded; idempotent)."""
        with self._lock:
            thread, self._watcher = self._watcher, None
            self._watch_interval = None
            self._watch_stop.set()
        if thread is not None and thread is not threading.current_thread() and self._watcher_pid == os.getpid():
            thread.join(timeout)

    @property
    def watching(self) -> bool:
        thread = self._watcher
        return thread is not None and thread.is_alive() and self._watcher_pid == os.getpid()

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self._watch_interval or 0.25):
            try:
                self.poll()
            except Exception:  # the watcher must outlive any one failure
                log.exception("featbit_shm: flag watcher")

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._dispatching = threading.Lock()
        if self._watcher is not None:
            parent = self._watcher_pid
            self._watcher = None
            self._watch_stop = threading.Event()
            warn_limited(
                "watcher-fork",
                f"featbit_shm: the flag watcher thread started in pid {parent} does not run in "
                f"forked pid {os.getpid()}; listeners here fire when this process next uses the client. "
                "Call client.flag_tracker.start_watching() in each worker (post_fork) instead.",
            )


def _after_fork_in_child() -> None:
    for tracker in list(_trackers):
        tracker._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
