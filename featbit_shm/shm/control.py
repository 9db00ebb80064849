"""The control block: one page that says which snapshot is current, and how the sync is doing.

Byte layout (little-endian, 4096 bytes, every field 8-byte aligned so each
8-byte field is written with one store)::

    off size type  field
      0   8  8s    magic            b"FBSHMCTL"
      8   4  u32   layout           LAYOUT
     12   4  u32   size             4096
     16   8  u64   sequence         seqlock: odd while the writer updates the snapshot fields
     24   8  u64   generation       the snapshot generation (readers poll this, 8-byte read)
     32   8  u64   snapshot length  bytes of the snapshot image
     40   4  u32   snapshot crc     crc32 of the image's header and tables
     44   4  u32   state            SyncState
     48   8  i64   data version     max updatedAt (ms), the sync cursor
     56   8  i64   leader pid
     64   8  f64   heartbeat        Unix time of the writer's last sign of life
     72   8  f64   state since      Unix time of the last state change
     80   8  u64   flags            active flags in the snapshot
     88   8  u64   segments         active segments in the snapshot
     96   8  u64   reconnects
    104   8  u64   events sent
    112   8  u64   events dropped   a full ring (or /dev/shm) dropped the NEW event (R-67)
    120   8  u64   events failed    given up: delivery stopped (401/403), or left at the shutdown deadline
    128   8  u64   delivery stopped 1 after a terminal 4xx (R-68)
    136   8  u64   publishes
    144   8  u64   publish errors
    152   8  f64   last publish     Unix time
    160   8  u64   events queued    waiting: written into rings and not yet delivered or lost (exact)
    168   8  u64   config           fingerprint of the leader's configuration (_core.settings.fingerprint)
    176   8  f64   last error at    Unix time of the last WARNING/ERROR the leader logged (0: none)
    184   8  u64   events refused   FeatBit refused them (400/413, found by splitting the batch)
    192   8  u64   events too large over the event size bound, refused by the recorder
    200   8  u64   events recorded  written into the rings, plus every one refused on the way in
    208   8  u64   events no space  (part of "dropped": /dev/shm had no page for them)
    216   8  u64   events malformed records the sync process could not decode
    224  64  64s   snapshot name    ASCII, NUL padded
    288 224  --    reserved
    512  64  64s   namespace        UTF-8, NUL padded (names the store in `featbit-shm status`)
    576 512  512s  last error       UTF-8, NUL padded, redacted (the text of "last error at")
   1088  ...       reserved to 4096

Only ``sequence`` through ``data version`` and ``snapshot name`` are covered by
the seqlock (a reader needs them consistent); the rest are independent
counters and times that a status reader takes as they are.
"""

from __future__ import annotations

import enum
import mmap
import struct
from collections.abc import Callable
from typing import Final

from .._runtime.processes import pid_alive
from .formats import CONTROL_LAYOUT as LAYOUT

MAGIC: Final = b"FBSHMCTL"
SIZE: Final = 4096

_HEAD: Final = struct.Struct("<8sII")
NAME_OFFSET: Final = 224
NAME_SIZE: Final = 64

# Indexes into the block viewed as 8-byte words ("Q", "q" or "d").
W_SEQ: Final = 2
W_GENERATION: Final = 3
W_LENGTH: Final = 4
W_CRC_STATE: Final = 5  # two u32 in one word: crc (low), state (high)
W_DATA_VERSION: Final = 6
W_PID: Final = 7
W_HEARTBEAT: Final = 8
W_STATE_SINCE: Final = 9
W_FLAGS: Final = 10
W_SEGMENTS: Final = 11
W_RECONNECTS: Final = 12
W_EVENTS_SENT: Final = 13
W_EVENTS_DROPPED: Final = 14
W_EVENTS_FAILED: Final = 15
W_DELIVERY_STOPPED: Final = 16
W_PUBLISHES: Final = 17
W_PUBLISH_ERRORS: Final = 18
W_LAST_PUBLISH: Final = 19
W_EVENTS_QUEUED: Final = 20
W_CONFIG: Final = 21
W_LAST_ERROR_AT: Final = 22
W_EVENTS_REFUSED: Final = 23
W_EVENTS_TOO_LARGE: Final = 24
W_EVENTS_RECORDED: Final = 25
W_EVENTS_NO_SPACE: Final = 26
W_EVENTS_MALFORMED: Final = 27
# Words 28-35 hold the name (NAME_OFFSET). The event counts of rings that
# were drained and removed, summed over every leader so far: a successor
# adds its live rings to these (EventPump.totals), exactly.
W_RETIRED_RECORDED: Final = 36
W_RETIRED_DROPPED: Final = 37
W_RETIRED_NO_SPACE: Final = 38
W_RETIRED_TOO_LARGE: Final = 39
W_SOURCE: Final = 40  # where the leader gets data now: an index into SOURCES
SOURCES: Final = ("unknown", "streaming", "polling", "file")
NAMESPACE_OFFSET: Final = 512
NAMESPACE_SIZE: Final = 64
ERROR_OFFSET: Final = 576
ERROR_SIZE: Final = 512

COUNTERS: Final = {
    "reconnects": W_RECONNECTS,
    "events_sent": W_EVENTS_SENT,
    "events_dropped": W_EVENTS_DROPPED,
    "events_failed": W_EVENTS_FAILED,
    "events_queued": W_EVENTS_QUEUED,
    "delivery_stopped": W_DELIVERY_STOPPED,
    "publishes": W_PUBLISHES,
    "publish_errors": W_PUBLISH_ERRORS,
    "events_refused": W_EVENTS_REFUSED,
    "events_too_large": W_EVENTS_TOO_LARGE,
    "events_recorded": W_EVENTS_RECORDED,
    "events_no_space": W_EVENTS_NO_SPACE,
    "events_malformed": W_EVENTS_MALFORMED,
    "retired_recorded": W_RETIRED_RECORDED,
    "retired_dropped": W_RETIRED_DROPPED,
    "retired_no_space": W_RETIRED_NO_SPACE,
    "retired_too_large": W_RETIRED_TOO_LARGE,
}


#: A heartbeat older than this means the sync process is dead or hung: the
#: one liveness rule (:meth:`ControlBlock.leader_alive`). The leader beats
#: every 0.5 s; three seconds leaves room for a slow publish on a loaded host.
STALE_AFTER_S: Final = 3.0


class SyncState(enum.IntEnum):
    """R-16: Starting / Stable / Interrupted / Stopped, with fbclient's names."""

    INITIALIZING = 0
    OK = 1
    INTERRUPTED = 2
    OFF = 3


class ControlError(ValueError):
    """The bytes are not a control block of this layout."""


class Pointer:
    """The seqlock-protected part of the block: which snapshot is current."""

    __slots__ = ("generation", "length", "crc", "state", "data_version", "name")

    def __init__(self, generation: int, length: int, crc: int, state: int, data_version: int, name: str) -> None:
        self.generation = generation
        self.length = length
        self.crc = crc
        self.state = state
        self.data_version = data_version
        self.name = name


class ControlBlock:
    """Typed access to a mapped control block (read-only or writable)."""

    def __init__(self, buf: mmap.mmap | bytearray | memoryview) -> None:
        view = memoryview(buf)
        if len(view) < SIZE:
            raise ControlError(f"control block is {len(view)} bytes, not {SIZE}")
        self._raw = view[:SIZE]
        self.q = self._raw.cast("Q")  # unsigned words
        self.i = self._raw.cast("q")  # signed words
        self.d = self._raw.cast("d")  # float words
        self.readonly = view.readonly

    # ---------------------------------------------------------------- checks

    def valid(self) -> bool:
        magic, layout, size = _HEAD.unpack_from(self._raw, 0)
        return bool(magic == MAGIC and layout == LAYOUT and size == SIZE)

    def check(self) -> None:
        magic, layout, size = _HEAD.unpack_from(self._raw, 0)
        if magic != MAGIC:
            raise ControlError("bad control block magic")
        if layout != LAYOUT or size != SIZE:
            raise ControlError(f"control block layout {layout} (size {size}) is not {LAYOUT}")

    # ---------------------------------------------------------------- reader side

    def read_pointer(self, attempts: int = 64) -> Pointer | None:
        """A consistent copy of the seqlock fields, or None if the writer kept
        them busy for every attempt (or died mid-update: sequence stays odd)."""
        q = self.q
        for _ in range(attempts):
            seq = q[W_SEQ]
            if seq & 1:
                continue
            generation = q[W_GENERATION]
            length = q[W_LENGTH]
            crc_state = q[W_CRC_STATE]
            data_version = self.i[W_DATA_VERSION]
            name = bytes(self._raw[NAME_OFFSET : NAME_OFFSET + NAME_SIZE])
            # Re-read the sequence after copying: unchanged and even means no
            # writer touched the fields in between.
            if q[W_SEQ] != seq:
                continue
            text = name.split(b"\0", 1)[0]
            try:
                decoded = text.decode("ascii")
            except UnicodeDecodeError:
                return None
            return Pointer(generation, length, crc_state & 0xFFFFFFFF, crc_state >> 32, data_version, decoded)
        return None

    @property
    def generation(self) -> int:
        return int(self.q[W_GENERATION])

    @property
    def state(self) -> SyncState:
        raw = self.q[W_CRC_STATE] >> 32
        try:
            return SyncState(raw)
        except ValueError:
            return SyncState.OFF

    @property
    def heartbeat(self) -> float:
        return float(self.d[W_HEARTBEAT])

    @property
    def state_since(self) -> float:
        return float(self.d[W_STATE_SINCE])

    @property
    def leader_pid(self) -> int:
        return int(self.i[W_PID])

    def heartbeat_age(self, now: float) -> float:
        """Seconds since the leader's last heartbeat (infinite before the first)."""
        beat = self.heartbeat
        return now - beat if beat else float("inf")

    def leader_alive(self, now: float, alive: Callable[[int], bool] = pid_alive) -> bool:
        """The one rule for "a sync process is serving this store": its pid
        runs, it did not stop (state OFF), and its heartbeat is at most
        :data:`STALE_AFTER_S` old. Workers, the status provider and
        ``featbit-shm status`` all judge a store by this."""
        return self.heartbeat_age(now) <= STALE_AFTER_S and self.state is not SyncState.OFF and alive(self.leader_pid)

    @property
    def config_fingerprint(self) -> int:
        return int(self.q[W_CONFIG])

    def counter(self, name: str) -> int:
        return int(self.q[COUNTERS[name]])

    @property
    def namespace(self) -> str:
        return _text(self._raw[NAMESPACE_OFFSET : NAMESPACE_OFFSET + NAMESPACE_SIZE])

    def last_error(self) -> tuple[float, str] | None:
        """(Unix time, text) of the last warning or error the leader logged.
        The time is cleared while the text changes, so a copy taken between
        two equal non-zero times is whole."""
        for _ in range(8):
            at = self.d[W_LAST_ERROR_AT]
            if not at:
                return None
            text = _text(self._raw[ERROR_OFFSET : ERROR_OFFSET + ERROR_SIZE])
            if self.d[W_LAST_ERROR_AT] == at:
                return at, text
        return None

    # ---------------------------------------------------------------- writer side

    def initialize(self) -> None:
        """Zero the block and stamp magic and layout (a fresh or unusable block)."""
        self._raw[:] = bytes(SIZE)
        _HEAD.pack_into(self._raw, 0, MAGIC, LAYOUT, SIZE)

    def recover(self) -> bool:
        """After a writer died mid-update the sequence is odd: make it even.

        Returns True when recovery was needed. The fields may then be a mix of
        old and new; the crc check in readers rejects a mismatched pair, and
        the new writer publishes a fresh generation straight away.
        """
        seq = self.q[W_SEQ]
        if seq & 1:
            self.q[W_SEQ] = seq + 1
            return True
        return False

    def write_pointer(self, generation: int, length: int, crc: int, data_version: int, name: str, state: SyncState) -> None:
        encoded = name.encode("ascii")
        if len(encoded) >= NAME_SIZE:
            raise ControlError(f"snapshot name {name!r} is too long")
        q = self.q
        seq = q[W_SEQ]
        # Sequence odd BEFORE any field changes, even again only AFTER all of
        # them: a reader that saw the same even value on both sides of its copy
        # knows no field changed under it.
        q[W_SEQ] = seq + 1
        self._raw[NAME_OFFSET : NAME_OFFSET + NAME_SIZE] = encoded.ljust(NAME_SIZE, b"\0")
        q[W_LENGTH] = length
        q[W_CRC_STATE] = (int(state) << 32) | (crc & 0xFFFFFFFF)
        self.i[W_DATA_VERSION] = data_version
        q[W_GENERATION] = generation
        q[W_SEQ] = seq + 2

    def set_state(self, state: SyncState, now: float) -> None:
        q = self.q
        current = q[W_CRC_STATE]
        if current >> 32 == int(state):
            return
        seq = q[W_SEQ]
        q[W_SEQ] = seq + 1
        q[W_CRC_STATE] = (int(state) << 32) | (current & 0xFFFFFFFF)
        q[W_SEQ] = seq + 2
        self.d[W_STATE_SINCE] = now

    def set_namespace(self, namespace: str) -> None:
        self._raw[NAMESPACE_OFFSET : NAMESPACE_OFFSET + NAMESPACE_SIZE] = _fit(namespace, NAMESPACE_SIZE)

    def set_last_error(self, now: float, text: str) -> None:
        self.d[W_LAST_ERROR_AT] = 0.0
        self._raw[ERROR_OFFSET : ERROR_OFFSET + ERROR_SIZE] = _fit(text, ERROR_SIZE)
        self.d[W_LAST_ERROR_AT] = now

    def set_word(self, word: int, value: int) -> None:
        self.q[word] = value

    def add(self, name: str, n: int = 1) -> None:
        word = COUNTERS[name]
        self.q[word] = self.q[word] + n

    def beat(self, now: float, pid: int) -> None:
        self.d[W_HEARTBEAT] = now
        self.i[W_PID] = pid

    def release(self) -> None:
        """Drop the memoryviews so the underlying mmap can be closed."""
        for view in (self.q, self.i, self.d, self._raw):
            view.release()


def _fit(text: str, size: int) -> bytes:
    """UTF-8, cut on a character boundary to fit ``size`` with a NUL, padded."""
    encoded = text.encode("utf-8", "backslashreplace")[: size - 1].decode("utf-8", "ignore").encode("utf-8")
    return encoded.ljust(size, b"\0")


def _text(raw: memoryview) -> str:
    return bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")
