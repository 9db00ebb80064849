"""``FBClient``: the fbclient-compatible facade.

The client evaluates from a *flag source* (:mod:`featbit_shm.worker.sources`):
the host's shared snapshot, read through a
:class:`~featbit_shm.shm.reader.SnapshotReader`, or, offline, data held in
this process (a bootstrap file, or :meth:`FBClient.initialize_from_external_json`).
Joining the host (registration, the event ring, starting a sync process
when none serves the store, the wait for data) is :mod:`featbit_shm.worker.host`.
Evaluation is the same whatever the source.

Two guarantees hold for every public method here:

* evaluation never raises: bad keys, bad users, malformed flags and values
  that do not convert give the default plus a reason kind (R-59, STYLE 6);
* results follow docs/PROTOCOL.md; where fbclient differs (G-n) the
  difference is listed in MIGRATING.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ._core.dataset import DataSet
from ._core.document import LoadResult, load_document
from ._core.errors import ConfigError, DataError
from ._core.evaluator import evaluate, send_to_experiment
from ._core.model import Decision
from ._core.results import (
    ERROR_EXCEPTION,
    ERROR_FLAG_NOT_FOUND,
    ERROR_INVALID_USER,
    ERROR_MALFORMED_FLAG,
    ERROR_STORE_REFUSED,
    REASON_CLIENT_NOT_READY,
    REASON_ERROR,
    REASON_FLAG_NOT_FOUND,
    REASON_WRONG_TYPE,
    WRONG_TYPE,
    ReasonKind,
    to_bool,
    to_float,
    to_int,
    to_json,
    to_json_object,
    to_number,
    to_str,
)
from ._core.user import InvalidUser, make_user, user_key
from ._runtime.environment import env_bool, env_float, env_int, format_number
from ._runtime.files import read_bootstrap_file
from ._runtime.notices import warn_limited
from ._runtime.processes import pid_alive
from .common_types import FLAG_KEY_UNKNOWN, FLAG_NAME_UNKNOWN, AllFlagStates, EvalDetail, shared_detail
from .config import Config
from .flag_change_notification import FlagTracker, TrackingSource
from .shm.names import StoreNames
from .shm.reader import SnapshotReader
from .shm.registry import Registry
from .status_types import DataUpdateStatusProvider, Health, judge
from .worker import host, sources
from .worker.recorder import EventRecorder
from .worker.sources import FlagSource, MemorySource

log = logging.getLogger("featbit_shm")

_NOT_READY = ReasonKind.CLIENT_NOT_READY
_ERROR = ReasonKind.ERROR
_WRONG = ReasonKind.WRONG_TYPE
_FALLTHROUGH = ReasonKind.FALLTHROUGH


def _flag_key(key: object) -> str | None:
    """The flag key every entry point looks up: a str as it is, a str
    subclass as its plain str (so ``variation`` and ``variation_detail``
    agree on it), anything else None (no flag has it: FlagNotFound)."""
    if type(key) is str:
        return key
    return str.__str__(key) if isinstance(key, str) else None


class FBClient:
    """Evaluate FeatBit flags; a drop-in for ``fbclient.FBClient``."""

    def __init__(self, config: Config, start_wait: float = 15.0) -> None:
        if not isinstance(config, Config):
            raise ConfigError("Config is not valid")
        self._config = config
        self._defaults = config.defaults
        self._closed = False
        self._started = time.time()
        self._status: DataUpdateStatusProvider | None = None
        self._events: EventRecorder | None = None
        self._tracker: FlagTracker | None = None
        self._watch: host.HostWatch | None = None
        self._pid = os.getpid()
        self._names = StoreNames.for_env("" if config.offline else config.env_secret, config.namespace)
        self._source: FlagSource
        if not config.offline:
            # Online: evaluate from the host's store, fed by the sync process
            # (started by the server's hooks, a mule or `featbit-shm sync`).
            reader = self._join(start_wait)
            self._source = reader
        elif config.shared:
            # offline is ready at once, with the host's shared snapshot
            # when one is published and an empty store otherwise -- except when
            # a bootstrap file is configured: its sync process must publish it.
            if config.bootstrap_file:
                # A sync process serves this file: not ready until it has published.
                self._source = self._join(start_wait)
            else:
                self._source = SnapshotReader(self._names, retry_interval=0.05, fallback=sources.memory_view(DataSet(), 0))
        elif config.bootstrap_file:
            result = load_document(read_bootstrap_file(config.bootstrap_file), origin=str(config.bootstrap_file))
            self._report(result, config.bootstrap_file)
            self._use_memory(result.dataset)
        else:
            # Offline, local, nothing to load: an empty store of this process's
            # own, filled by initialize_from_external_json or TestData.
            self._use_memory(DataSet())

    def _join(self, start_wait: float) -> SnapshotReader:
        """Join the host's store (see :mod:`featbit_shm.worker.host`): the
        reader, its watch (registration after a fork, healing), the event
        ring, a sync process when none serves the store, the wait for data."""
        config = self._config
        registry = Registry(self._names)  # one lock file handle for both uses (cold start)
        if not config.disable_events and not config.offline:
            # Events go into this process's ring; the sync process posts them.
            self._events = EventRecorder(self._names, ring_bytes=config.event_ring_bytes, registry=registry, max_event_bytes=config.max_event_bytes)
        watch = host.HostWatch(
            self._names, registry, self._events, ring_bytes=config.event_ring_bytes,
            start_sync=self._start_sync_process if env_bool("FEATBIT_SHM_HEAL") else None,
            config_fingerprint=config.fingerprint(), config_env=config.to_env(),
        )
        reader = SnapshotReader(self._names, retry_interval=0.05, on_watch=watch)
        watch.reader = reader
        self._watch = watch
        host.join(
            self._names, reader, registry, self._events, ring_bytes=config.event_ring_bytes,
            start_sync=self._start_sync_process if config.start_sync else None,
        )
        host.wait_ready(reader, start_wait)
        return reader

    def _start_sync_process(self) -> int | None:
        """Start a sync process for this client's store, detached (never a
        child of this process); its pid. ``host`` calls this when none serves
        the store. It is configured by this client's Config over the process
        environment. Under a server that owns its sync processes
        (``FEATBIT_SHM_OWNER_PID``, set by the gunicorn hooks) it belongs to
        that server, which may build its clients lazily (none registered
        for a while after a reload is normal), so it runs as long as the
        server -- and none is started once the server is gone; otherwise it
        exits once no client has been alive for ``FEATBIT_SHM_IDLE_TIMEOUT``
        (default 30 s)."""
        from .sync import SyncSettings, start_detached

        env = {**os.environ, **self._config.to_env()}
        owner = env_int("FEATBIT_SHM_OWNER_PID")
        if owner:
            if not pid_alive(owner):
                return None  # the server is gone, and its workers with it
            env["FEATBIT_SHM_OWNER_PID"] = str(owner)
            env["FEATBIT_SHM_IDLE_TIMEOUT"] = ""
        else:
            env["FEATBIT_SHM_OWNER_PID"] = ""
            env["FEATBIT_SHM_IDLE_TIMEOUT"] = format_number(env_float("FEATBIT_SHM_IDLE_TIMEOUT") or host.AUTOSTART_IDLE_TIMEOUT_S)
        return start_detached(SyncSettings.from_env(env))

    def _use_memory(self, dataset: DataSet) -> None:
        """Serve this data from now on (offline data of the client's own)."""
        current = getattr(self, "_source", None)
        source = self._backing()
        if not isinstance(source, MemorySource):
            source = MemorySource()
        source.publish(dataset)
        if isinstance(current, TrackingSource):
            current.inner = source  # listeners keep listening (and see this as a change)
        else:
            self._source = source

    def _backing(self) -> FlagSource | None:
        """The flag source itself, under any change-tracking wrapper."""
        source = getattr(self, "_source", None)
        return source.inner if isinstance(source, TrackingSource) else source

    # ------------------------------------------------------------------ lifecycle

    @property
    def initialize(self) -> bool:
        """True once the client has data to evaluate (offline: at once)."""
        return self._source.current() is not None

    async def wait_until_ready(self, timeout: float = 15.0) -> bool:
        """Wait for flag data without blocking the event loop (build the
        client in an ASGI lifespan, then ``await client.wait_until_ready()``).
        True once the client has data; False when the sync process reports
        OFF or ``timeout`` runs out. Offline clients are ready at once."""
        source = self._backing()
        if isinstance(source, SnapshotReader) and self._watch is not None:
            # A client that joined the host: a sync process is to publish.
            return await host.wait_ready_async(source, timeout)
        return self.initialize  # offline: data of its own, or the shared store as it is

    @property
    def update_status_provider(self) -> DataUpdateStatusProvider:
        """fbclient's status provider: state, ``wait_for_OKState``, ``latest_version``."""
        provider = self._status
        if provider is None:
            source = self._backing()

            def control() -> Any:
                return source.control if isinstance(source, SnapshotReader) else None

            def version() -> int:
                view = self._source.current()
                return view.version if view is not None else 0

            provider = self._status = DataUpdateStatusProvider(
                control,
                offline=not isinstance(source, SnapshotReader) or self._config.offline,
                ready=lambda: self.initialize,
                version=version,
                started=self._started,
                behind=source.behind if isinstance(source, SnapshotReader) else lambda: None,
            )
            if self._watch is not None:
                self._watch.status = provider  # listeners hear of changes at the store watch
        return provider

    def health(self) -> Health:
        """Is this process serving fresh flags? Truthy when so; ``reason``
        says why not (for a web health endpoint: ``return (h.to_json_dict(),
        200 if h else 503)``). See :class:`~featbit_shm.status_types.Health`."""
        state = self.update_status_provider.current_state
        view = self._source.current()
        return judge(state, view is not None, view.generation if view is not None else 0)

    def is_offline(self) -> bool:
        return self._config.offline

    def stop(self) -> None:
        """Stop the client. Idempotent and bounded; evaluation keeps serving
        retained data with events suppressed (R-79). Events already recorded
        are in shared memory: the sync process delivers them even after this
        process exits, so stop() only asks for a flush and never waits."""
        if self._closed:
            return
        self._closed = True
        tracker = self._tracker
        if tracker is not None:
            tracker.close()  # no listener callback starts after stop
        if self._status is not None:
            self._status.stop_watching()
            if self._watch is not None:
                self._watch.status = None
        events = self._events
        if events is not None:
            events.flush()
            events.stop()
            self._events = None

    # ------------------------------------------------------------------ events

    def track_metric(self, user: Mapping[str, Any], event_name: str, metric_value: float = 1.0) -> None:
        """Record a custom metric event (R-63); records even before initialization (R-66)."""
        self.track_metrics(user, {event_name: metric_value})

    def track_metrics(self, user: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Several metrics in one payload object, as fbclient does (R-64)."""
        events = self._events
        if events is None:
            return
        try:
            make_user(user)
            pairs = [(str(name), float(value)) for name, value in metrics.items() if isinstance(name, str) and name]
        except (InvalidUser, TypeError, ValueError, AttributeError) as exc:
            log.warning("featbit_shm: metric not recorded: %s", exc)
            return
        if pairs:
            events.record_metrics(user, pairs)

    def identify(self, user: Mapping[str, Any]) -> None:
        """Register the user with FeatBit (a payload with the user alone, R-64)."""
        events = self._events
        if events is None:
            return
        try:
            make_user(user)
        except InvalidUser as exc:
            log.warning("featbit_shm: identify ignored: %s", exc)
            return
        events.record_identify(user)

    def flush(self) -> None:
        """Ask the sync process to send this process's events now (R-69); returns at once."""
        events = self._events
        if events is not None:
            events.flush()

    def flush_and_wait(self, timeout: float = 5.0) -> bool:
        """Wait until events recorded before the call were sent or failed (R-69).

        True on completion, False on timeout (e.g. no sync process running).
        """
        events = self._events
        if events is None or events.flush_and_wait(timeout):
            return True
        source = self._backing()
        if isinstance(source, SnapshotReader) and not host.leader_alive(source):
            warn_limited(
                "flush-no-sync",
                f"featbit_shm: flush_and_wait() timed out in pid {os.getpid()}: no sync process is running for "
                f"store {self._names.tag}; events stay in shared memory until one starts "
                "(gunicorn hooks, a uWSGI mule or `featbit-shm sync`)",
            )
        return False

    def __enter__(self) -> FBClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def initialize_from_external_json(self, json_str: str) -> bool:
        """Replace the offline store with a data-sync document (R-73).

        Returns False (and logs why) when the client is not offline or the
        document is unusable; the previous data stays. Malformed flags or
        segments inside a good document are skipped and logged by key.
        Unlike fbclient (G-3) the document always replaces the store.
        """
        if not self._config.offline:
            return False
        if os.getpid() != self._pid and not isinstance(self._backing(), SnapshotReader):
            warn_limited(
                "external-json-fork",
                f"featbit_shm: initialize_from_external_json() in forked pid {os.getpid()} updates this "
                f"process only, not its siblings (the client was built in pid {self._pid}); to give "
                "every worker the same data, use Config(bootstrap_file=..., shared=True) served by the sync process",
            )
        try:
            result = load_document(json_str, require_full=False)
        except DataError as exc:
            log.error("featbit_shm: bootstrap JSON rejected: %s", exc)
            return False
        self._report(result, "external JSON")
        self._use_memory(result.dataset)
        return True

    @staticmethod
    def _report(result: LoadResult, origin: object) -> None:
        for s in result.skipped:
            log.warning("featbit_shm: %s: skipped malformed %s %r: %s", origin, s.kind, s.key, s.error)

    # ------------------------------------------------------------------ evaluation

    def _detail(self, key: str, user: Any, default: Any, convert: Callable[[str], Any] | None, record: bool = True) -> EvalDetail:
        """Evaluate one flag; ``convert`` None means "by the flag's variationType"."""
        view = self._source.current()
        if view is None or view.generation == 0:  # nothing from the host's store (yet)
            refused = getattr(self._backing(), "refused", None)
            if refused is not None:  # only another account's objects under the store's names
                return EvalDetail(f"store refused: {refused.describe()}", default, key, FLAG_NAME_UNKNOWN, "", _ERROR, ERROR_STORE_REFUSED)
        if view is None:
            return EvalDetail(REASON_CLIENT_NOT_READY, default, key, FLAG_NAME_UNKNOWN, "", _NOT_READY)
        plain = _flag_key(key)
        if plain is None:
            return EvalDetail(REASON_FLAG_NOT_FOUND, default, FLAG_KEY_UNKNOWN, FLAG_NAME_UNKNOWN, "", _ERROR, ERROR_FLAG_NOT_FOUND)
        key = plain
        try:
            flag = view.flag(key)
        except Exception as exc:  # a flag that cannot even be built  # noqa: BLE001
            return EvalDetail(f"malformed flag: {exc}", default, key, FLAG_NAME_UNKNOWN, "", _ERROR, ERROR_MALFORMED_FLAG)
        if flag is None:
            return EvalDetail(REASON_FLAG_NOT_FOUND, default, key, FLAG_NAME_UNKNOWN, "", _ERROR, ERROR_FLAG_NOT_FOUND)
        try:
            u = make_user(user)
        except InvalidUser as exc:
            return EvalDetail(f"invalid user: {exc}", default, key, flag.name, "", _ERROR, ERROR_INVALID_USER)
        kind, var, reason, _rule, expt = evaluate(flag, u, view.segment)
        if var is None:
            return EvalDetail(reason, default, key, flag.name, "", kind, ERROR_MALFORMED_FLAG if kind is _ERROR else "")
        value = var.converted() if convert is None else convert(var.value)
        if value is WRONG_TYPE:
            return EvalDetail(REASON_WRONG_TYPE, default, key, flag.name, "", _WRONG)
        events = self._events if record else None
        if events is not None:  # one event per successful evaluation, after conversion
            events.record_eval(user, key, var.id, var.value, send_to_experiment(expt, key, u))
        split = kind is _FALLTHROUGH and flag.fallthrough.needs_bucket
        return EvalDetail(reason, value, key, flag.name, var.id, kind, "", split)

    def variation(self, key: str, user: Mapping[str, Any], default: Any = None) -> Any:
        """The flag's value for this user, converted by the flag's type, or ``default``.

        Never raises. ``Config.defaults[key]`` is used when ``default`` is None
        (fbclient lets it override the argument, G-10).
        """
        # The hot path, written out: one generation check, one dict lookup,
        # one user check, one evaluation (skipped for user-independent
        # flags, which need the user only checked, not read). Everything
        # else is in _detail.
        try:
            # A str subclass is looked up as its plain str; anything else finds no flag.
            name = key if type(key) is str else _flag_key(key)
            if default is None and self._defaults and name is not None:
                default = self._defaults.get(name)
            view = self._source.current()
            if view is None or name is None:
                return default
            flag = view.flag(name)
            if flag is None:
                return default
            decision = flag.static_decision
            if decision is None:
                decision = evaluate(flag, make_user(user), view.segment)
            elif user_key(user) is None:
                make_user(user)  # raises InvalidUser: the default
            var = decision.variation
            if var is None:
                return default
            value = var.typed if not var.reparse else var.converted()
            if value is WRONG_TYPE:
                return default
            events = self._events
            if events is not None:  # one event per successful evaluation, after conversion (_record, inline)
                expt = decision.experiment
                events.record_eval(user, name, var.id, var.value, expt if expt is True or expt is False else send_to_experiment(expt, name, make_user(user)))
            return value
        except Exception:  # noqa: BLE001 - evaluation never raises (STYLE 6)
            return default

    @staticmethod
    def _record(events: EventRecorder, user: Any, key: str, decision: Decision) -> None:
        """The evaluation event of a successful decision (R-66), with its
        sendToExperiment decided for this user when it depends on it (R-55)."""
        var = decision.variation
        assert var is not None
        expt = decision.experiment
        events.record_eval(user, key, var.id, var.value, expt if expt is True or expt is False else send_to_experiment(expt, key, make_user(user)))

    def variation_detail(self, key: str, user: Mapping[str, Any], default: Any = None) -> EvalDetail:
        """Value plus reason, reason kind and variation id (R-57). Never raises.

        The result is read-only, as fbclient's is.
        """
        # The fast path, written out as in variation(): a str key, a valid user
        # (checked once: by make_user when the flag reads it, else by the C
        # check), a decision that chose a variation, its prebuilt detail.
        try:
            if type(key) is str:
                view = self._source.current()
                flag = view.flag(key) if view is not None else None
                if flag is not None:
                    decision = flag.static_decision
                    if decision is None:
                        decision = evaluate(flag, make_user(user), view.segment)  # type: ignore[union-attr]
                    elif user_key(user) is None:
                        make_user(user)  # an invalid user raises: the full path says why
                    kept = flag.details.get(id(decision))
                    detail = kept[1] if kept is not None and kept[0] is decision else shared_detail(flag, decision)
                    if detail is not None:  # None: an error, or a JSON value fresh per call (the full path)
                        events = self._events
                        if events is not None:
                            self._record(events, user, key, decision)
                        return detail
        except Exception:  # noqa: BLE001 - the full path below says what went wrong
            pass
        plain = _flag_key(key)
        if default is None and self._defaults and plain is not None:
            default = self._defaults.get(plain)
        return self._typed(key, user, default, None)

    def _quiet_variation(self, key: str, user: Mapping[str, Any], default: Any = None) -> Any:
        """:meth:`variation` recording no event: for change listeners (R-88's
        listener evaluations are not user traffic)."""
        return self._typed(key, user, default, None, record=False).variation

    # ------------------------------------------------------------------ change listeners

    @property
    def flag_tracker(self) -> FlagTracker:
        """Register flag change listeners (fbclient's ``flag_tracker``, R-88).

        Listeners fire when this process next uses the client after the
        data changed, or from an opt-in watcher thread
        (``flag_tracker.start_watching()``); see
        :mod:`featbit_shm.flag_change_notification`.
        """
        tracker = self._tracker
        if tracker is None:
            tracker = self._tracker = FlagTracker(self._quiet_variation, self._install_tracking)
        return tracker

    def _install_tracking(self, tracker: FlagTracker) -> TrackingSource:
        wrapper = TrackingSource(self._source, tracker)
        self._source = wrapper
        return wrapper

    def is_enabled(self, key: str, user: Mapping[str, Any]) -> bool:
        """True only when the flag's value is the boolean ``true``."""
        return self._value(key, user, False, to_bool)  # type: ignore[no-any-return]

    def _typed(self, key: str, user: Any, default: Any, convert: Callable[[str], Any] | None, record: bool = True) -> EvalDetail:
        """:meth:`_detail` behind the never-raise guard (STYLE 6)."""
        try:
            return self._detail(key, user, default, convert, record)
        except Exception as exc:
            log.exception("featbit_shm: unexpected evaluation error")
            return EvalDetail(f"{REASON_ERROR}: {exc}", default, key, FLAG_NAME_UNKNOWN, "", _ERROR, ERROR_EXCEPTION)

    # Typed variations: strict conversion, WrongType + default on failure.

    def _value(self, key: str, user: Any, default: Any, convert: Callable[[str], Any]) -> Any:
        """A typed variation's value: the fast path (as in
        :meth:`variation_detail`), else the full path. Never raises."""
        try:
            if type(key) is str:
                view = self._source.current()
                flag = view.flag(key) if view is not None else None
                if flag is not None:
                    decision = flag.static_decision
                    if decision is None:
                        decision = evaluate(flag, make_user(user), view.segment)  # type: ignore[union-attr]
                    elif user_key(user) is None:
                        make_user(user)  # an invalid user raises: the full path says why
                    var = decision.variation
                    if var is not None:
                        value = convert(var.value)
                        if value is not WRONG_TYPE:
                            events = self._events
                            if events is not None:
                                self._record(events, user, key, decision)
                            return value
        except Exception:  # noqa: BLE001 - the full path below says what went wrong
            pass
        return self._typed(key, user, default, convert).variation

    def bool_variation(self, key: str, user: Mapping[str, Any], default: bool = False) -> bool:
        return self._value(key, user, default, to_bool)  # type: ignore[no-any-return]

    def bool_variation_detail(self, key: str, user: Mapping[str, Any], default: bool = False) -> EvalDetail:
        return self._typed(key, user, default, to_bool)

    def int_variation(self, key: str, user: Mapping[str, Any], default: int = 0) -> int:
        return self._value(key, user, default, to_int)  # type: ignore[no-any-return]

    def int_variation_detail(self, key: str, user: Mapping[str, Any], default: int = 0) -> EvalDetail:
        return self._typed(key, user, default, to_int)

    def float_variation(self, key: str, user: Mapping[str, Any], default: float = 0.0) -> float:
        return self._value(key, user, default, to_float)  # type: ignore[no-any-return]

    def float_variation_detail(self, key: str, user: Mapping[str, Any], default: float = 0.0) -> EvalDetail:
        return self._typed(key, user, default, to_float)

    def number_variation(self, key: str, user: Mapping[str, Any], default: float = 0) -> int | float:
        """int when the value is integral, else float (fbclient's number rule)."""
        return self._value(key, user, default, to_number)  # type: ignore[no-any-return]

    def number_variation_detail(self, key: str, user: Mapping[str, Any], default: float = 0) -> EvalDetail:
        return self._typed(key, user, default, to_number)

    def string_variation(self, key: str, user: Mapping[str, Any], default: str = "") -> str:
        return self._value(key, user, default, to_str)  # type: ignore[no-any-return]

    def string_variation_detail(self, key: str, user: Mapping[str, Any], default: str = "") -> EvalDetail:
        return self._typed(key, user, default, to_str)

    def json_variation(self, key: str, user: Mapping[str, Any], default: Any = None) -> Any:
        """The value parsed as JSON (a fresh object per call)."""
        return self._value(key, user, default, to_json)

    def json_variation_detail(self, key: str, user: Mapping[str, Any], default: Any = None) -> EvalDetail:
        return self._typed(key, user, default, to_json)

    def object_variation(self, key: str, user: Mapping[str, Any], default: Any = None) -> Any:
        """A JSON object or array; any other value is WrongType (no event, R-66)."""
        return self._value(key, user, default, to_json_object)

    def object_variation_detail(self, key: str, user: Mapping[str, Any], default: Any = None) -> EvalDetail:
        return self._typed(key, user, default, to_json_object)

    # ------------------------------------------------------------------ bulk

    def get_all_latest_flag_variations(self, user: Mapping[str, Any]) -> AllFlagStates:
        """Every active flag for this user; records no events (R-60, not G-10).

        One bad flag gives an Error detail for that key and the rest still
        evaluate (not G-6). Values are converted as :meth:`variation` does.
        """
        view = self._source.current()
        if view is None:
            return AllFlagStates(False, REASON_CLIENT_NOT_READY, {})
        try:
            u = make_user(user)
        except InvalidUser as exc:
            return AllFlagStates(False, f"invalid user: {exc}", {})
        plan: tuple[dict[str, EvalDetail | None], tuple[str, ...]] | None = view.memo.get("all-flags")
        if plan is None:
            try:
                plan = view.memo["all-flags"] = _all_flags_plan(view)
            except Exception as exc:  # noqa: BLE001 - a damaged snapshot index
                return AllFlagStates(False, f"{REASON_ERROR}: {exc}", {})
        template, per_user = plan
        # Flags whose result cannot depend on the user are in the template
        # already, in key order; the others are evaluated into their places.
        details = template.copy()
        segment_of = view.segment
        flag_of = view.flag
        for key in per_user:
            try:
                flag = flag_of(key)
                if flag is None:
                    del details[key]
                    continue
                decision = flag.static_decision or evaluate(flag, u, segment_of)
                kept = flag.details.get(id(decision))
                detail = kept[1] if kept is not None and kept[0] is decision else shared_detail(flag, decision)
                if detail is not None:
                    details[key] = detail
                    continue
                kind, var, reason, _rule, _expt = decision
                if var is None:
                    details[key] = EvalDetail(reason, None, key, flag.name, "", kind, ERROR_MALFORMED_FLAG if kind is _ERROR else "")
                    continue
                value = var.converted()
                if value is WRONG_TYPE:
                    details[key] = EvalDetail(REASON_WRONG_TYPE, None, key, flag.name, "", _WRONG)
                else:
                    details[key] = EvalDetail(reason, value, key, flag.name, var.id, kind, "", kind is _FALLTHROUGH and flag.fallthrough.needs_bucket)
            except Exception as exc:  # noqa: BLE001 - one bad flag never fails the rest
                details[key] = EvalDetail(f"{REASON_ERROR}: {exc}", None, key, FLAG_NAME_UNKNOWN, "", _ERROR, ERROR_EXCEPTION)
        return AllFlagStates._taking(details)  # type: ignore[arg-type]  # every placeholder was filled or deleted

    @property
    def generation(self) -> int:
        """The snapshot generation this process evaluates from (featbit_shm
        extension; 0 before any data). Workers of one host that show the same
        generation serve the same flag data."""
        view = self._source.current()
        return view.generation if view is not None else 0

    def is_flag_known(self, key: str) -> bool:
        view = self._source.current()
        try:
            plain = _flag_key(key)
            return view is not None and plain is not None and view.flag(plain) is not None
        except Exception:  # noqa: BLE001
            return False


def _all_flags_plan(view: Any) -> tuple[dict[str, EvalDetail | None], tuple[str, ...]]:
    """What every all-flags call of one view shares: each active flag's key
    in order, with its detail when no user can change it (a prebuilt, shared
    one: the flag is off, or has no targets, no rules and one variation for
    everyone), and the keys to evaluate per user, whose places hold None.

    So a call costs what its user-dependent flags cost. Raises only when the
    view's key list cannot be read; a flag that cannot be read is left to
    each call, which reports it."""
    template: dict[str, EvalDetail | None] = {}
    per_user: list[str] = []
    for key in view.flag_keys():
        try:
            flag = view.flag(key)
        except Exception:  # noqa: BLE001 - each call says what is wrong with it
            template[key] = None
            per_user.append(key)
            continue
        if flag is None:
            continue  # archived
        decision = flag.static_decision
        detail = None
        if decision is not None:
            kept = flag.details.get(id(decision))
            detail = kept[1] if kept is not None and kept[0] is decision else shared_detail(flag, decision)
        template[key] = detail
        if detail is None:
            per_user.append(key)
    return template, tuple(per_user)
