"""What runs in an app process (a gunicorn or uWSGI worker, a Celery child, a script).

* :mod:`.sources` -- where a client's flags come from: the host's snapshot
  (:class:`~featbit_shm.shm.reader.SnapshotReader`) or data held in this
  process (:class:`.sources.MemorySource`);
* :mod:`.recorder` -- writes this process's analytics events into its ring;
* :mod:`.host` -- joins the host's store: registration, the event ring, a
  sync process started when none serves the store, the wait for data.

Nothing here opens a socket or starts a thread, and nothing here imports
the sync package: starting a sync process is a function the public client
hands in (:func:`.host.join`).
"""
