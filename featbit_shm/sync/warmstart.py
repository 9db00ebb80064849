"""Warm start: the last good data set on disk, served when FeatBit is unreachable at start.

A host that boots (or whose /dev/shm was emptied) while FeatBit is
unreachable would serve every flag's default until FeatBit returns. So the
leader keeps the last data set it published in a file, and a leader that
finds no published snapshot and gets no data from FeatBit -- its first
attempt failed, or ``WARM_GRACE_S`` passed -- publishes that file's data
with state INTERRUPTED: workers
serve last-known values, and the status says they are not fresh. The first
data from FeatBit replaces it whole (the cursor stays 0 until then: a full
sync, so the server's version always wins).

The file (``<state dir>/<environment tag>.json``, ``StoreNames.environment``: the same in every release that writes
this ``FORMAT``; a later format adds ``.v<FORMAT>`` to the name, see ``file_name``) holds flags and segments as
the sync process holds them (normalised from FeatBit's wire form), the environment tag, the namespace, the data version and a
SHA-256 of the payload -- never the secret (the tag is a hash of it). It is
written atomically (a temporary file, fsync, rename) with mode 0600 in a
directory of this account's (0700; created when missing), at most every
``SAVE_INTERVAL_S`` and only when the data changed, and skipped when larger
than ``MAX_BYTES``. A file that is not this account's regular 0600 file, a
link, of another store, or whose checksum does not match is ignored with a
log line saying why.

Where: ``FEATBIT_SHM_STATE_DIR``, else ``~/.local/state/featbit-shm`` when
the home directory is the account's own. ``FEATBIT_SHM_WARM_START=auto``
(the default) keeps the file only there; ``1`` insists (an error is logged
when no directory can be used); ``0`` never reads or writes one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from typing import Final

from .._core.dataset import DataSet

log = logging.getLogger("featbit_shm.sync")

FORMAT: Final = 1
WARM_GRACE_S: Final = 1.0  # no data from FeatBit this long after start (or a first failure): publish the file's
SAVE_INTERVAL_S: Final = 30.0
MAX_BYTES: Final = 256 * 1024 * 1024


def state_directory(configured: str | None, mode: str) -> str | None:
    """The directory of warm-start files, or None when warm start is off here."""
    if mode == "0":
        return None
    if configured:
        return configured
    home = os.path.expanduser("~")
    try:
        st = os.stat(home)
    except OSError:
        st = None
    if st is None or st.st_uid != os.geteuid() or not stat.S_ISDIR(st.st_mode):
        if mode == "1":
            log.error("featbit_shm: FEATBIT_SHM_WARM_START=1 but no state directory: set FEATBIT_SHM_STATE_DIR (home %s is not this account's)", home)
        return None
    directory = os.path.join(home, ".local", "state", "featbit-shm")
    if mode == "auto" and not _can_write(directory):
        return None  # a read-only root (readOnlyRootFilesystem, docker --read-only, ProtectSystem=strict)
    return directory


def _can_write(directory: str) -> bool:
    """Could this account keep a file in ``directory``, made if missing? The
    nearest directory that exists decides (access() says EROFS on a
    read-only file system, even to root)."""
    path = directory
    while not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.access(path, os.W_OK | os.X_OK)


def file_name(tag: str, file_format: int | None = None) -> str:
    """The warm-start file of an environment, in one file format.

    Releases that write the same format share the file (it outlives an
    upgrade); releases of different formats, side by side on one host
    (docs/recipes/kubernetes.md), keep one each instead of overwriting the
    other's with a file it must ignore. Format 1 keeps its first name.
    """
    file_format = FORMAT if file_format is None else file_format
    return f"{tag}.json" if file_format == 1 else f"{tag}.v{file_format}.json"


class WarmStart:
    """The warm-start file of one store."""

    def __init__(self, directory: str, tag: str, namespace: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, file_name(tag))
        self._tag = tag
        self._namespace = namespace
        self._saved_version: int | None = None
        self._next_save = 0.0
        self.saves = 0

    # ------------------------------------------------------------------ read

    def load(self) -> DataSet | None:
        """The data set in the file, or None (absent, foreign, damaged: logged)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("featbit_shm: warm-start file %s ignored: %s", self.path, exc)
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                log.warning("featbit_shm: warm-start file %s ignored: owner uid %d, mode %o (expected this account's 0600 file)",
                            self.path, st.st_uid, st.st_mode & 0o777)
                return None
            if st.st_size > MAX_BYTES:
                log.warning("featbit_shm: warm-start file %s ignored: %d bytes, over %d", self.path, st.st_size, MAX_BYTES)
                return None
            raw = b""
            while len(raw) < st.st_size:
                chunk = os.read(fd, st.st_size - len(raw))
                if not chunk:
                    break
                raw += chunk
        finally:
            os.close(fd)
        try:
            document = json.loads(raw)
            payload = document["payload"]
            if document.get("format") != FORMAT or document.get("store") != self._tag:
                raise ValueError(f"format {document.get('format')!r} of store {document.get('store')!r}, not this store's")
            if hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest() != document.get("sha256"):
                raise ValueError("its checksum does not match: damaged")
            flags, segments = payload["flags"], payload["segments"]
            if not isinstance(flags, list) or not isinstance(segments, list):
                raise ValueError("flags and segments must be lists")
            # Packed while the parsed file is alive: what is kept points into none of it.
            dataset = DataSet({f["key"]: f for f in flags}, {s["id"]: s for s in segments}, packed=True)
            if dataset.version != document.get("data_version"):
                raise ValueError("its data version does not match its entries")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("featbit_shm: warm-start file %s ignored: %s", self.path, exc)
            return None
        saved = document.get("saved_at")
        log.info("featbit_shm: read warm-start data of store %s: %d flags, data version %d, saved %s",
                 self._tag, len(dataset.flags), dataset.version, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(saved)) if saved else "?")
        return dataset

    # ------------------------------------------------------------------ write

    def save_due(self, dataset: DataSet, now: float) -> bool:
        return dataset.version != self._saved_version and now >= self._next_save

    def save(self, dataset: DataSet, now: float) -> bool:
        """Write the data set (atomically). True when written.

        The file is written entity by entity (each decoded, dumped and
        hashed on its own), so saving a 100,000-flag data set never holds
        it whole as dicts or as one JSON text."""
        self._next_save = now + SAVE_INTERVAL_S
        head = json.dumps({
            "format": FORMAT,
            "store": self._tag,
            "namespace": self._namespace,
            "data_version": dataset.version,
            "saved_at": time.time(),
        }, separators=(",", ":"))
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            self._ensure_directory()
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                written = self._write_document(fd, head, dataset)
                if written is not None:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if written is None:
                os.unlink(temporary)
                return False
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("featbit_shm: warm-start data of store %s not saved in %s: %s", self._tag, self.directory, exc)
            try:
                os.unlink(temporary)
            except OSError:
                pass
            return False
        self._saved_version = dataset.version
        self.saves += 1
        return True

    def _write_document(self, fd: int, head: str, dataset: DataSet) -> int | None:
        """``head`` with the payload and its SHA-256 added, written to ``fd``;
        the bytes written, or None when over MAX_BYTES (logged). The payload
        is the entries as the sync process holds them (normalised from
        FeatBit's wire form), each dumped with sorted keys: exactly what
        :meth:`load` dumps again to check the hash."""
        digest = hashlib.sha256()
        pending: list[bytes] = []
        size = flushed = 0

        def put(text: str, hashed: bool = True) -> None:
            nonlocal size
            data = text.encode()
            if hashed:
                digest.update(data)
            pending.append(data)
            size += len(data)
            if size - flushed >= 1 << 20:
                flush()

        def flush() -> None:
            nonlocal flushed
            view = memoryview(b"".join(pending))
            pending.clear()
            flushed = size
            while view:
                view = view[os.write(fd, view):]

        put(head[:-1] + ',"payload":', hashed=False)
        for name, entities in (("flags", dataset.flags), ("segments", dataset.segments)):
            put('{"flags":[' if name == "flags" else '],"segments":[')
            for i, key in enumerate(entities):
                put(("," if i else "") + json.dumps(entities[key], sort_keys=True, separators=(",", ":")))
                if size > MAX_BYTES:
                    log.warning("featbit_shm: warm-start data of store %s not saved: over %d bytes", self._tag, MAX_BYTES)
                    return None
        put("]}")
        put(f',"sha256":"{digest.hexdigest()}"}}', hashed=False)
        flush()
        return size

    def _ensure_directory(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise OSError(f"{self.directory} is not a directory only this account may write (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o})")
