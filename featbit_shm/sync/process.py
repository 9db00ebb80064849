"""The sync process: one per host and (environment, namespace).

Theory of operation
-------------------

Election. Every candidate (started by a gunicorn master, a uWSGI mule,
``featbit-shm sync`` or a client) is a fresh interpreter. It tries the
*leader* lock file without blocking. The winner leads. A loser tries the
*standby* lock: the one that gets it waits, blocking on the leader lock, to
take over the moment the leader dies (the kernel drops a dead process's
locks, so a SIGKILLed leader is replaced within milliseconds); every other
candidate exits at once. So there is one leader, at most one standby, and
one websocket, however many candidates start together. A new leader starts
a new standby, and keeps one: when its standby dies (killed, crashed) it
starts another within a second or so, unless another candidate already
stands by -- otherwise a later leader death would leave the host with no
sync process at all.

Leading. The leader opens the store's :class:`SnapshotWriter`, adopts the
snapshot a previous leader published (its data version is the sync cursor,
so a restart asks FeatBit only for what changed, R-7), then runs its data
source: FeatBit's websocket, or a bootstrap file offline. Every committed
full or patch is published as one generation (R-13, R-14); the state
(INITIALIZING / OK / INTERRUPTED / OFF, R-16) and a heartbeat at least every
second go into the control block.

Exit. On SIGTERM, SIGINT or SIGHUP (a closed terminal), or when the owner process (``FEATBIT_SHM_OWNER_PID``,
e.g. the gunicorn master) is gone, the leader stops its standby and, as the
last owner, unlinks every shared-memory object of the store. After a 4003
(R-18) it stops too but leaves the store with state OFF for clients to see.
A leader killed with SIGKILL leaves its objects; the next leader adopts or
replaces them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

from .._core.dataset import Changes, DataSet
from .._core.protocol import Backoff
from .._core.wire import DataSyncMessage
from .._runtime import redaction
from .._runtime.environment import env_str
from .._runtime.notices import warn_limited
from .._runtime.processes import is_sync_process, pid_alive
from ..shm.control import SOURCES, W_CONFIG, W_SOURCE, SyncState
from ..shm.locks import remove_lock_files
from ..shm.names import StoreNames
from ..shm.reader import find_control
from ..shm.registry import Registry
from ..shm.writer import SnapshotWriter, open_image, publish_delay_from_env, publish_fault_from_env
from .delivery import InsightClient
from .election import Election
from .launcher import spawn_sync_process, stop_sync_process
from .pump import EventPump
from .settings import SyncSettings
from .sources import AutoSource, FileSource, PollingSource, StreamSource
from .warmstart import WARM_GRACE_S, WarmStart, state_directory

log = logging.getLogger("featbit_shm.sync")

EXIT_OK = 0
EXIT_NOT_NEEDED = 0  # a leader and a standby already run: nothing to do
EXIT_REJECTED = 3  # FeatBit closed with 4003
STANDBY_CHECK_S = 1.0  # how often a leader checks that its standby still runs
STANDBY_BACKOFF_MAX_S = 30.0  # a standby that keeps dying young is restarted at most this often


class SyncProcess:
    """One candidate; :meth:`run` returns the process exit code."""

    def __init__(self, settings: SyncSettings, *, spawn_standby: bool = True) -> None:
        self.settings = settings
        self.names = StoreNames.for_env(settings.store_secret, settings.namespace)
        self.stop = threading.Event()
        # Packed: every entity kept as its msgpack bytes (wire.Packed), what the
        # snapshot stores; decoded only for listeners, warm start or a rebuild.
        self.dataset = DataSet(packed=True)
        self.writer: SnapshotWriter | None = None
        self.state = SyncState.INITIALIZING
        self._spawn_standby = spawn_standby and settings.standby
        self._standby_proc: subprocess.Popen[bytes] | None = None
        self._election: Election | None = None
        self._opens = 0  # websockets this leader opened
        self._adopted = False  # took over a predecessor's published snapshot
        self._standby_started = 0.0
        self._standby_next_check = 0.0
        self._standby_delay = STANDBY_CHECK_S
        self._last_beat = 0.0
        self._owner_checked = 0.0
        self.rejected = False
        self._registry: Registry | None = None
        self._idle_since: float | None = None
        self._pump: EventPump | None = None
        self._pump_thread: threading.Thread | None = None
        self._pump_stop = threading.Event()
        self._beat_stop = threading.Event()
        self._unpublished = False  # the data set holds changes no generation carries yet
        self._publish_retry_at = 0.0
        self._publish_retry_delay = 1.0
        self._last_error = LastErrorHandler(self)
        self._orphan_noted = False
        self._owner_gone = False  # the owner died: serve what is left, start no standby
        self._data_source: FileSource | StreamSource | PollingSource | AutoSource | None = None
        self._warm: WarmStart | None = None  # the warm-start file of this store (None: off here)
        self._warm_data: DataSet | None = None  # read at start, published if FeatBit stays silent
        self._serving_warm = False  # the published data came from the file: the cursor stays 0
        self._lead_started = 0.0

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        election = self._election = Election(self.names)
        try:
            if not election.try_lead():
                replacing = False
                standby = election.try_standby()
                if not standby:
                    # Both roles taken: by an older configuration, this server replaces both
                    # (a leader stops its standby when it stops).
                    replacing = self._replace_mismatched_leader()
                    role = self._retry_election(election) if replacing else None
                    if role is None:
                        log.info("featbit_shm: a sync leader and a standby already run for store %s", self.names.tag)
                        return EXIT_NOT_NEEDED
                    standby = role == "standby"
                if standby:
                    log.info("featbit_shm: standing by for store %s", self.names.tag)
                    replacing = replacing or self._replace_mismatched_leader()
                    if not election.wait_to_lead(self.stop, self._watch_owner):
                        return EXIT_OK
                    election.standby.release()
                    if not replacing and self._previous_leader_stopped_cleanly():
                        log.info("featbit_shm: the leader of store %s stopped cleanly; standby exits", self.names.tag)
                        if find_control(self.names)[0] is None:
                            # The leader was the store's last owner: it removed the
                            # store and its lock files. The leader lock this standby
                            # now holds is a file FileLock.acquire made again under
                            # that name (shm.locks); remove it, still held, as the
                            # leader did, or it outlives the store.
                            remove_lock_files([self.names.lock_path], self.names.access)
                        return EXIT_OK
            log.info("featbit_shm: leading store %s (pid %d)", self.names.tag, os.getpid())
            return self._lead()
        finally:
            election.release()

    def _retry_election(self, election: Election, timeout: float = 15.0) -> str | None:
        """After asking a leader to step down: "lead" or "standby" once one of
        the roles is free, None when neither frees within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            if election.try_lead():
                return "lead"
            if election.try_standby():
                return "standby"
            self.stop.wait(0.1)
        return None

    def _replace_mismatched_leader(self) -> bool:
        """One configuration plane: a server (re)started with a new
        configuration starts its sync process with an owner; when the leader
        it finds runs another configuration (fingerprint in the control
        block), it asks that leader to step down (SIGTERM: a hand-over, the
        store stays) and leads in its place. A candidate without an owner
        (autostarted by a client) never replaces anyone. True when asked."""
        if not self.settings.owner_pid:
            return False
        block, _refused = find_control(self.names)
        if block is None:
            return False
        theirs, mine, pid = block.config_fingerprint, self.settings.fingerprint(), block.leader_pid
        if not theirs or theirs == mine or not block.leader_alive(time.time()) or not is_sync_process(pid):
            return False
        log.warning(
            "featbit_shm: the sync process leading store %s (pid %d) runs another configuration than this server's; "
            "asking it to hand over to this one",
            self.names.tag,
            pid,
        )
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError as exc:
            log.error("featbit_shm: cannot stop sync process %d to replace it: %s", pid, exc)
            return False
        return True

    def _previous_leader_stopped_cleanly(self) -> bool:
        """A clean stop unlinks the control block (or leaves it OFF after a
        4003); a leader that crashed leaves it as it was. Only then take over."""
        block, _refused = find_control(self.names)
        return block is None or block.state is SyncState.OFF

    def _lead(self) -> int:
        # publish_delay: the test-only slow-writer fault (store.writer docstring); None unless set.
        self.writer = SnapshotWriter(self.names, publish_delay=publish_delay_from_env(), publish_fault=publish_fault_from_env())
        clean = False
        try:
            self._adopt()
            self._prepare_warm_start()
            # Clients compare it with their own Config (worker.host.HostWatch).
            self.writer.control.set_word(W_CONFIG, self.settings.fingerprint())
            self.writer.control.set_namespace(self.settings.namespace)
            logging.getLogger("featbit_shm").addHandler(self._last_error)
            if self._spawn_standby:
                self._start_standby()
            source = self._data_source = self._source()
            self.writer.heartbeat()
            self._start_heartbeat()
            self._start_events()
            source.run(self._on_data, self._on_state, self._tick, self.stop)
            clean = True
            return EXIT_REJECTED if self.rejected else EXIT_OK
        finally:
            self._beat_stop.set()
            if self._warm is not None and not self._serving_warm and self.state is SyncState.OK and self._warm.save_due(self.dataset, 0.0):
                self._warm.save(self.dataset, time.monotonic())  # the freshest data for the next start
            self._stop_events()
            logging.getLogger("featbit_shm").removeHandler(self._last_error)
            self._stop_standby()
            # The last owner removes everything on a clean stop; after a crash
            # the next leader does. A rejected client (4003) leaves the store
            # in place with state OFF, so every client and `featbit-shm status`
            # can see why nothing syncs; its owner removes it on exit.
            stopping = (clean or self.stop.is_set()) and not self.rejected
            others = self._clients_remain() if stopping else set()
            if others:
                log.info("featbit_shm: %d process(es) still use store %s; leaving it for the next leader", len(others), self.names.tag)
            self.writer.close(unlink=stopping and not others)
            if stopping and not others:
                # The last owner out: the registry goes too once no ring is
                # left in it (_stop_events tried before the clients were
                # gone), then the lock files (a process that waits on one
                # notices and takes the new one, shm.locks).
                self._unlink_registry_if_empty()
                remove_lock_files(self.names.lock_files, self.names.access)

    def _clients_remain(self, wait: float = 3.0) -> set[int]:
        """Live processes still registered with the store, after waiting up
        to ``wait`` seconds for a stopping server's workers to exit. A leader
        that stops while others remain hands over: it leaves the store to
        them (they start a new sync process when none serves it,
        featbit_shm.worker.host), and the last one out removes it."""
        registry = Registry(self.names)
        try:
            if not registry.attach(create=False):
                return set()
            deadline = time.monotonic() + wait
            while True:
                pids = registry.live_pids(pid_alive)
                if not pids or time.monotonic() >= deadline:
                    return pids
                time.sleep(0.1)
        except Exception as exc:  # noqa: BLE001 - when in doubt, leave the store in place
            log.warning("featbit_shm: cannot read the client registry at stop: %s", exc)
            return {-1}
        finally:
            registry.close()

    def _adopt(self) -> None:
        """Resume from the published snapshot: its data version is our cursor."""
        assert self.writer is not None
        pointer = self.writer.control.read_pointer()
        if pointer is None or not pointer.name or not self.writer.current_name:
            self.writer.set_state(SyncState.INITIALIZING)
            return
        try:
            self.dataset = open_image(self.names, pointer.name, pointer.length, pointer.crc).to_dataset(packed=True)
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot is simply not adopted
            log.warning("featbit_shm: could not adopt the published snapshot: %s", exc)
            return
        self._adopted = True
        # Data is there but not fresh: Interrupted until a sync commits.
        self.state = SyncState.INTERRUPTED
        self.writer.set_state(SyncState.INTERRUPTED)
        log.info("featbit_shm: adopted generation %d (cursor %d)", pointer.generation, self.dataset.version)

    def _source(self) -> FileSource | StreamSource | PollingSource | AutoSource:
        s = self.settings
        if s.offline:
            assert s.bootstrap_file
            return FileSource(s.bootstrap_file)

        def cursor() -> int:
            return 0 if self._serving_warm else self.dataset.version  # after a warm start: a full, the server wins

        polling = PollingSource(s.env_secret, s.streaming_url, cursor, interval=s.polling_interval, ca_bundle=s.ca_bundle, rejected_retry=s.rejected_retry_interval)
        if s.data_sync == "polling":
            return polling
        stream = StreamSource(
            s.env_secret, s.streaming_url, cursor,
            backoff=Backoff(first=s.streaming_first_retry_delay), on_open=self._on_open, ca_bundle=s.ca_bundle,
            rejected_retry=s.rejected_retry_interval,
        )
        # auto: a websocket is tried again every 6 polls (a minute at the default interval).
        return AutoSource(stream, polling, probe_interval=max(6 * s.polling_interval, 5.0)) if s.data_sync == "auto" else stream

    def _prepare_warm_start(self) -> None:
        """Read the warm-start file when nothing is published (see .warmstart)."""
        s = self.settings
        self._lead_started = time.monotonic()
        directory = None if s.offline else state_directory(s.state_dir, s.warm_start)
        if directory is None:
            return
        # Named by the environment, not the store: the file outlives a release
        # whose formats change (shm.formats).
        self._warm = WarmStart(directory, self.names.environment or self.names.tag, s.namespace)
        if not self._adopted:
            self._warm_data = self._warm.load()

    def _publish_warm(self, now: float) -> None:
        """FeatBit said nothing within WARM_GRACE_S of start: serve the file's data, INTERRUPTED."""
        data, self._warm_data = self._warm_data, None
        assert data is not None and self.writer is not None
        self.dataset = data
        self._serving_warm = True
        if self._publish(None):
            self.state = SyncState.INTERRUPTED
            self.writer.set_state(SyncState.INTERRUPTED)
            log.warning(
                "featbit_shm: no data from FeatBit %.1f s after start; serving the warm-start data of store %s "
                "(%d flags, data version %d) as INTERRUPTED until FeatBit answers",
                now - self._lead_started, self.names.tag, len(data.flags), data.version,
            )

    def _on_open(self) -> None:
        """Count reconnects for ``featbit-shm status``: every websocket this
        store opens after its first -- a new leader's first one included, when
        it took over a predecessor's snapshot."""
        assert self.writer is not None
        self._opens += 1
        if self._opens > 1 or self._adopted:
            self.writer.control.add("reconnects")

    # ------------------------------------------------------------------ callbacks

    def _on_data(self, messages: list[DataSyncMessage]) -> None:
        """Commit valid fulls and patches, in order, as ONE generation, then
        publish readiness (R-13, R-14): each message stays atomic, and a batch
        that arrived together becomes visible together."""
        assert self.writer is not None
        dataset = self.dataset
        full = False
        flags: set[str] = set()
        segments: set[str] = set()
        for message in messages:
            for skipped in message.skipped:
                log.warning("featbit_shm: skipped malformed %s %r: %s", skipped.kind, skipped.key, skipped.error)
            dataset, changes = dataset.apply(message)
            full = full or changes.full
            flags |= changes.flags
            segments |= changes.segments
        changed = Changes(full, frozenset(flags), frozenset(segments))
        self.dataset = dataset
        self.rejected = False  # data again: a rejection (4003) was healed
        self._warm_data = None  # FeatBit answered: the file is not needed
        if self._serving_warm and full:
            self._serving_warm = False  # the server's full replaced the file's data
            log.info("featbit_shm: FeatBit answered; the warm-start data of store %s is replaced", self.names.tag)
        if changed or self.state is not SyncState.OK or self.writer.generation == 0 or self._unpublished:
            if not self._publish(None if full or self._unpublished else changed):
                return
        self.state = SyncState.OK
        self.writer.set_state(SyncState.OK)

    def _publish(self, changes: Changes | None) -> bool:
        """Publish the data set; True on success. A failure (a full /dev/shm,
        a permission error) never ends the process: it is logged, counted
        (publish errors, in status), and the whole data set is published
        again from the tick, 1 s later and then less often (up to 30 s),
        while workers keep serving the last generation."""
        assert self.writer is not None
        try:
            self.writer.publish(self.dataset, changes, SyncState.OK)
        except Exception as exc:  # noqa: BLE001 - contained: retried from the tick
            self._unpublished = True
            self._publish_retry_delay = min(self._publish_retry_delay * 2, 30.0) if self._publish_retry_at else 1.0
            self._publish_retry_at = time.monotonic() + self._publish_retry_delay
            warn_limited(
                "publish-failed",
                f"featbit_shm: publishing store {self.names.tag} failed ({exc}); workers keep the last generation, "
                f"retrying in {self._publish_retry_delay:.0f} s",
                every=30.0,
                level=logging.ERROR,
            )
            return False
        if self._unpublished:
            log.info("featbit_shm: store %s published again after %d failed attempt(s)", self.names.tag, self.writer.control.counter("publish_errors"))
        self._unpublished = False
        self._publish_retry_at = 0.0
        return True

    def _on_state(self, state: SyncState) -> None:
        assert self.writer is not None
        if state is SyncState.OFF:
            self.rejected = True
            if not self.settings.rejected_retry_interval:
                self.stop.set()  # final (FEATBIT_REJECTED_RETRY_INTERVAL=0); else retried, OFF meanwhile
        elif state is SyncState.INTERRUPTED and self.state is SyncState.INITIALIZING:
            if self._warm_data is not None:
                self._publish_warm(time.monotonic())  # FeatBit failed us at start: last-known data now
            return  # stays Starting until the first success ([PY] does the same)
        self.state = state
        self.writer.set_state(state)

    def _start_heartbeat(self) -> None:
        """The heartbeat, the owner watch and the registry sweep run on a
        thread of their own, so a stalled network (a server that trickles a
        byte every few seconds, a blocked DNS lookup) never makes a live
        leader look dead, nor keeps it running after its owner is gone."""
        self._beat_stop = threading.Event()

        def beat() -> None:
            assert self.writer is not None
            while not self._beat_stop.wait(self.settings.heartbeat_interval):
                try:
                    self.writer.beat()
                    self._watch_owner()
                except Exception:
                    log.exception("featbit_shm: heartbeat failed")

        threading.Thread(target=beat, name="featbit-heartbeat", daemon=True).start()

    def _tick(self) -> None:
        """Called by the source between network operations (main thread):
        retried publishes, retired snapshots, the standby."""
        now = time.monotonic()
        if self._unpublished and self.writer is not None and now >= self._publish_retry_at:
            if self._publish(None):
                self.state = SyncState.OK
                self.writer.set_state(SyncState.OK)
        if self.writer is not None and now - self._last_beat >= self.settings.heartbeat_interval:
            self.writer.heartbeat()  # also unlinks retired generations (main thread only)
            self._last_beat = now
        if self._warm_data is not None and self.writer is not None and now - self._lead_started >= WARM_GRACE_S and self.state is not SyncState.OK:
            self._publish_warm(now)
        warm = self._warm
        if warm is not None and self.state is SyncState.OK and not self._serving_warm and warm.save_due(self.dataset, now):
            warm.save(self.dataset, now)
        self._keep_standby(now)
        if self.writer is not None:
            self.writer.control.set_word(W_SOURCE, SOURCES.index(self._source_mode()))

    def _source_mode(self) -> str:
        """How the leader gets data now (status: an auto mode that fell back to polling says so)."""
        source = self._data_source
        if isinstance(source, AutoSource):
            return source.mode
        if isinstance(source, FileSource):
            return "file"
        return "polling" if isinstance(source, PollingSource) else "streaming"

    def _watch_owner(self) -> None:
        owner = self.settings.owner_pid
        now = time.monotonic()
        if now - self._owner_checked < 0.5:
            return
        self._owner_checked = now
        orphaned = owner is not None and owner > 0 and not pid_alive(owner)
        self._owner_gone = orphaned
        if orphaned and self.writer is None:
            log.info("featbit_shm: owner process %d is gone; stopping", owner)
            self.stop.set()  # a standby: the leader serves what is left
        if self.writer is None:
            return  # a standby: the registry is the leader's business
        if self._registry is None:
            self._registry = Registry(self.names)
        try:
            # Every half second, idle timeout or not: frees the slots of
            # exited clients, so recycled workers never fill the registry.
            live = self._registry.live_processes(pid_alive)
        except Exception as exc:  # noqa: BLE001 - a broken registry must not stop syncing
            log.warning("featbit_shm: cannot read the client registry: %s", exc)
            return
        if orphaned:
            # A server killed with SIGKILL (no on_exit): its workers outlive it
            # for a while. Keep them served (and their events delivered) until
            # the last one is gone, then stop and remove the store.
            if not live:
                log.info("featbit_shm: owner process %d is gone and no client is left; stopping", owner)
                self.stop.set()
            elif not self._orphan_noted:
                self._orphan_noted = True
                log.warning("featbit_shm: owner process %d is gone; serving its %d remaining client(s) until they exit", owner, live)
            return
        idle = self.settings.idle_timeout
        if idle is None:
            return
        if live:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= idle:
            log.info("featbit_shm: no client for %.0f s; stopping", idle)
            self.stop.set()

    # ------------------------------------------------------------------ events

    def _start_events(self) -> None:
        """Drain the workers' event rings on a thread (online, unless disabled)."""
        s = self.settings
        if s.offline or not s.event_url or s.disable_events:
            return
        assert self.writer is not None
        self._pump_stop = threading.Event()
        self._pump = EventPump(
            self.names,
            InsightClient(s.event_url, s.env_secret, ca_bundle=s.ca_bundle),
            self.writer.control,
            flush_interval=s.events_flush_interval,
            concurrency=s.event_concurrency,
            ring_bytes=s.ring_bytes,
            attempts=s.events_max_retries + 1,
            retry_delay=s.events_retry_interval,
        )
        self._pump_thread = threading.Thread(target=self._pump.run, args=(self._pump_stop,), name="featbit-events", daemon=True)
        self._pump_thread.start()

    def _stop_events(self) -> None:
        """R-70: a final drain within the shutdown deadline (5 s)."""
        if self._pump_thread is None or self._pump is None:
            if self.stop.is_set() and not self.rejected:
                # No pump (offline, events disabled), but the owner watch made
                # the registry: it goes too at a clean stop once no client is left.
                self._unlink_registry_if_empty()
            return
        self._pump_stop.set()
        self._pump_thread.join(7.0)
        self._pump.close()
        if self.stop.is_set() and not self.rejected:
            # A clean stop: rings of exited workers were drained and removed;
            # the registry goes too unless a live worker still owns a ring.
            self._pump.registry.unlink_if_empty(pid_alive)
        self._pump_thread = None

    def _unlink_registry_if_empty(self) -> None:
        """Remove the registry when no live client and no ring is left in it."""
        registry = Registry(self.names)
        try:
            if registry.attach(create=False):
                registry.unlink_if_empty(pid_alive)
        finally:
            registry.close()

    # ------------------------------------------------------------------ standby

    def _start_standby(self) -> None:
        self._standby_started = time.monotonic()
        self._standby_next_check = self._standby_started + self._standby_delay
        try:
            self._standby_proc = spawn_sync_process(self.settings)
        except OSError as exc:
            log.warning("featbit_shm: could not start a standby sync process: %s", exc)

    def _keep_standby(self, now: float) -> None:
        """Start a new standby when ours is gone, unless another candidate
        already holds the standby lock. Checked every second; a standby that
        keeps dying within 5 s of its start is restarted less and less often
        (the interval doubles, up to 30 s)."""
        if not self._spawn_standby or self._election is None or now < self._standby_next_check:
            return
        if self._owner_gone:
            return  # a standby would be of the same dead owner: it exits at once (and again, and again)
        proc = self._standby_proc
        self._standby_next_check = now + STANDBY_CHECK_S
        if proc is not None and proc.poll() is None:  # poll() also reaps a dead one
            return
        if not self._election.try_standby():
            return  # someone else stands by
        self._election.standby.release()
        young = proc is not None and now - self._standby_started < 5.0
        self._standby_delay = min(self._standby_delay * 2, STANDBY_BACKOFF_MAX_S) if young else STANDBY_CHECK_S
        log.warning("featbit_shm: no standby sync process for store %s; starting one", self.names.tag)
        self._start_standby()

    def _stop_standby(self) -> None:
        if self._standby_proc is not None:
            stop_sync_process(self._standby_proc, timeout=5)


class LastErrorHandler(logging.Handler):
    """Keeps the leader's last warning or error in its control block, where
    ``featbit-shm status`` shows it (redacted, as every log line is)."""

    def __init__(self, process: SyncProcess) -> None:
        super().__init__(logging.WARNING)
        self._process = process

    def emit(self, record: logging.LogRecord) -> None:
        writer = self._process.writer
        if writer is None:
            return
        try:
            text = redaction.REDACTOR.redact(record.getMessage())
            writer.control.set_last_error(record.created, f"{record.levelname}: {text}")
        except Exception:  # noqa: BLE001 - a status aid never breaks logging
            pass


def main(argv: list[str] | None = None) -> int:
    """``python -m featbit_shm.sync`` / ``featbit-shm sync``: configured from FEATBIT_*."""
    logging.basicConfig(level=env_str("FEATBIT_LOG_LEVEL").upper(), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    redaction.install()  # no token or secret in any log line, whatever a server sends back
    try:
        settings = SyncSettings.from_env()
    except Exception as exc:  # noqa: BLE001 - a config error is a clear message, not a traceback
        print(f"featbit-shm sync: {redaction.REDACTOR.redact(str(exc))}", file=sys.stderr)
        return 2
    redaction.install(settings.env_secret)
    process = SyncProcess(settings)

    def on_signal(signum: int, _frame: object) -> None:
        process.stop.set()

    # A clean stop on each of them, whatever the caller had blocked or ignored
    # (dispositions set to "ignore" and the blocked mask survive exec).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    return process.run()
