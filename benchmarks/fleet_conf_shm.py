"""gunicorn config of bench_fleet for featbit_shm: the project's hooks, timed.

The master starts the sync process in ``when_ready`` (gunicorn_hooks); each
worker attaches in ``post_fork`` through ``gunicorn_hooks.post_fork`` and the
app evaluates with ``featbit_shm.get()``. Settings come from FLEET_* and
FEATBIT_* variables set by bench_fleet.py.
"""

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_here, os.path.dirname(_here)]

import fleet_app  # noqa: E402

import gunicorn_hooks  # noqa: E402
from gunicorn_hooks import child_exit, on_exit, on_reload, when_ready  # noqa: E402

__all__ = ["child_exit", "on_exit", "on_reload", "post_fork", "when_ready", "worker_exit"]

bind = os.environ["FLEET_BIND"]
workers = int(os.environ["FLEET_WORKERS"])
worker_class = "sync"
timeout = 120
graceful_timeout = 60
loglevel = "warning"


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    fleet_app.boot(lambda: fleet_app.start_shm(lambda: gunicorn_hooks.post_fork(server, worker)))


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    fleet_app.finish(lambda: gunicorn_hooks.worker_exit(server, worker))
