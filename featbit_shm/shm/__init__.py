"""Shared memory: the only code that touches /dev/shm, mmap and lock files.

Theory of operation
-------------------

One store per (account, environment, namespace) on a host. Its names carry
the account's uid and a hash of (env secret, namespace) (:mod:`.names`); the
secret itself never appears in a name, in shared memory or in a log (R-77).
/dev/shm belongs to every account, so nothing found there is trusted before
``fstat`` says this account made it (:mod:`.trust`): another account's object
under a store's name is refused -- never read, adopted or unlinked -- and the
writer takes a fresh name.

Who writes: exactly one process per store -- the elected sync process, the
*leader* -- holds a :class:`~.writer.SnapshotWriter`. Who reads: every
worker, through a :class:`~.reader.SnapshotReader`, mapping snapshots
read-only. Events flow the other way: each worker is the single producer of
its own ring (:mod:`.ring`), and the leader's event pump is the single
consumer of every ring.

Publishing a generation: build the image in private memory; create NEW
objects, reserve their size with ``posix_fallocate`` (a full /dev/shm is a
clear :class:`~featbit_shm.errors.SharedMemoryError` here, never a SIGBUS
later), copy the image in; only then flip the control block under its
seqlock. The previous generation stays published if anything before the
flip fails.

Reading: every evaluation reads the control block's 8-byte generation. Only
when it changed does the reader take the seqlock copy of (generation,
object name, length, crc), map the root and its chunks read-only, and check
magic, layout and crc. A torn read (odd or changed sequence, crc mismatch,
object already gone) is retried; when retries run out the reader keeps
serving the last good generation and tries again shortly.

Crash, restart, fork, resize: a writer killed at any point leaves either
the old generation published or the new one, never a mix; a new leader
revalidates the control block (an odd sequence means its predecessor died
mid-update), adopts the published generation and numbers new ones after
every number an object of the store already carries. Old objects are
unlinked after a grace period; a reader that mapped one keeps a valid
mapping (POSIX keeps an unlinked object alive while it is mapped). A
forked child inherits the reader's read-only mappings; it rebuilds its lock
on first use and claims its own event ring on its first event. Nothing is
ever resized in place: a bigger snapshot is a new object, a ring's capacity
is fixed when it is created.

Objects and lock files
----------------------

``<tag>`` stands for ``<uid>.<hash>`` (:attr:`.names.StoreNames.base`);
objects live in /dev/shm, lock files in the account's private directory
``/dev/shm/featbit-shm-<uid>`` (:func:`.locks.runtime_directory`). The control
block and the registry may also be found under ``.ctl.1`` ... and ``.reg.1``
... when another account squatted the first name. Modes: 0600 (0640 for
snapshots and control block, 0660 for rings, registry and locks, when the
store is shared with a group, :mod:`.trust`).

======================  =====================  =====================  ======================  ===========================  ==============================
object / lock file      created by             written by             read by                 lifetime                     removed by
======================  =====================  =====================  ======================  ===========================  ==============================
``fbshm.<tag>.ctl``     the first leader       the leader only        workers, standby, CLI,  the store's life             the last leader on a clean
control block, 4 KiB    (O_CREAT|O_EXCL); a    (seqlock fields,       gunicorn master                                      stop (after publishing an
(:mod:`.control`)       later leader adopts    heartbeat, counters)                                                        empty pointer with state OFF);
                        a valid one                                                                                        gunicorn ``on_exit`` sweeps
``fbshm.<tag>.g<N>``    the leader, for        the leader, once,      workers (read-only,     until the next generation    the leader, 2 s after it is
snapshot root           generation N           before the flip        crc-checked), CLI       is published + 2 s grace     retired (at most 3 retired
(:mod:`.._core.         (O_CREAT|O_EXCL)       (immutable after)                              (at most 3 kept)             kept); a new leader removes
snapshot`)                                                                                                                 every root it does not adopt
``fbshm.<tag>.c<N>``    the leader, written    the leader, once       workers, CLI            while a live generation      as roots
snapshot chunk          by generation N                                                       lists it
``fbshm.<tag>.r<id>``   a worker claiming its  producer words and     the leader's pump       its worker's life, then      the pump, once the owner pid
event ring              ring, or the pump as   data: the owner;       (consumer)              until drained                is dead and the ring drained;
(:mod:`.ring`)          a spare                consumer words: pump                                                        spares on a clean stop
``fbshm.<tag>.reg``     whoever maps it first  any registered         the pump, the idle      the store's life             the leader on a clean stop
registry                (worker or pump)       process, under the     check, the CLI                                       when no ring is claimed and
(:mod:`.registry`)                             registry lock                                                               no client lives
``<tag>.lock``          the first candidate    (a lock, no content)   --                      held by the leader           nobody yet (lock files stay)
leader lock
``...lock.standby``     the first candidate    (a lock)               --                      held by the standby          nobody yet
``...lock.registry``    whoever touches the    (a lock)               --                      held while a slot changes    nobody yet
                        registry
======================  =====================  =====================  ======================  ===========================  ==============================

Memory ordering
---------------

Every shared word is 8 bytes, 8-byte aligned, written with one store
through a ``memoryview`` cast to ``Q``/``q``/``d``; the code relies on such
a store being atomic and on stores becoming visible in program order (TSO,
as on x86-64). Each write whose order matters says so where it is made:
the snapshot objects are complete before the control block's pointer flips
(:meth:`.writer.SnapshotWriter.publish`); the sequence is odd before any
pointer field changes and even again only after all of them
(:meth:`.control.ControlBlock.write_pointer`); a ring's record bytes are
written before its ``head`` moves, and its ``tail`` moves only after the
consumer copied the bytes out and FeatBit took them (:mod:`.ring`). On a
weakly ordered CPU the same code would still never serve a torn snapshot
(the crc of the root and of every blob is checked) nor a torn record (every
length is validated), but a reader could retry more often.

Modules
-------

* :mod:`.trust` -- whom a store trusts, and the refusals;
* :mod:`.names` -- every name a store uses;
* :mod:`.objects` -- create (exclusive, space reserved), map read-only, unlink;
* :mod:`.locks` -- the runtime directory and the one way a lock file is taken;
* :mod:`.control` -- the control block's byte layout and the liveness rule;
* :mod:`.writer` / :mod:`.reader` -- publishing and following generations;
* :mod:`.ring` / :mod:`.registry` -- event rings and the table that hands them out.
"""
