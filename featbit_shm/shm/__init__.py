"""The shared-memory snapshot store: one writer process, many read-only readers.

Theory of operation
-------------------

Who writes: exactly one process per (environment, namespace) on a host -- the
sync process -- holds a :class:`~.writer.SnapshotWriter`. Who reads: every
worker, through a :class:`~.reader.SnapshotReader`, mapping everything
read-only.

Objects in /dev/shm (names from :mod:`.names`, a hash of secret+namespace):

* the **control block** ``fbshm.<hash>.ctl``: one page, fixed layout (see
  :mod:`.control`), never resized, never truncated;
* one **snapshot object** per generation ``fbshm.<hash>.g<generation>``: an
  immutable image (see :mod:`featbit_shm._core.snapshot`).

Publishing a generation: build the image in private memory; create a NEW
object, reserve its size with ``posix_fallocate`` (a full /dev/shm is a clear
:class:`~featbit_shm.errors.SharedMemoryError` here, never a SIGBUS later),
copy the image in, close it; only then flip the control block under its
seqlock (sequence odd while the writer updates it). The previous generation
stays published if anything before the flip fails.

Reading: every evaluation reads the control block's 8-byte generation. Only
when it changed does the reader take the seqlock snapshot of (generation,
object name, length, tables crc), open and map the object read-only, and
check magic, layout and crc. A torn read (odd or changed sequence, crc
mismatch, object already gone) is retried; when retries run out the reader
keeps serving the last good generation and tries again shortly.

Crash, restart, fork: a writer killed at any point leaves either the old
generation published or the new one, never a mix; a new writer revalidates
the control block (an odd sequence means it died mid-update) and carries on
numbering generations from it. Old objects are unlinked by the writer after
a grace period; a reader that mapped one keeps a valid mapping (POSIX keeps
unlinked objects alive while mapped). A forked child inherits the reader's
mappings, which stay valid and read-only; it rebuilds its lock on first use.
"""
