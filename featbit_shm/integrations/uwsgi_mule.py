"""A uWSGI programmed mule that runs featbit_shm's sync process.

    [uwsgi]
    master = true
    processes = 4
    mule = /path/to/site-packages/featbit_shm/integrations/uwsgi_mule.py
    env = FEATBIT_ENV_SECRET=...
    env = FEATBIT_STREAMING_URL=wss://featbit.example.com
    env = FEATBIT_EVENT_URL=https://featbit.example.com
    env = FEATBIT_SHM_AUTOSTART=0                        ; the mule starts it, not the workers
    die-on-term = true

Print the path with ``python -c "import featbit_shm.integrations.uwsgi_mule as m; print(m.__file__)"``.
(The older path ``featbit_shm/uwsgi_mule.py`` still works: it runs this module.)

The mule does not sync in its own process (a mule is a fork of the uWSGI
master, with whatever the master holds): it starts the sync process as a
fresh interpreter owned by the mule, and waits. When uWSGI stops or kills the
mule, the sync process sees its owner gone and shuts down cleanly within a
second. Workers need nothing but ``featbit_shm.get()`` (or an ``FBClient``);
they start no thread, so ``enable-threads`` is not required.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def run() -> int:
    from featbit_shm.sync import SyncSettings, spawn_sync_process, stop_sync_process

    settings = SyncSettings.from_env()
    proc = spawn_sync_process(settings, owner_pid=os.getpid())
    print(f"featbit_shm: mule {os.getpid()} started sync process {proc.pid}", file=sys.stderr, flush=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    while not stopping:
        if proc.poll() is not None:
            # It exited by itself (rejected, or a config error): say so and
            # keep the mule alive, so uWSGI does not respawn it in a loop.
            print(f"featbit_shm: sync process exited with {proc.returncode}", file=sys.stderr, flush=True)
            while not stopping:
                time.sleep(1)
            return 0
        time.sleep(0.5)
    stop_sync_process(proc)
    return 0


if __name__ == "__main__" or "uwsgi" in sys.modules:
    sys.exit(run())
