"""gunicorn config of bench_fleet for the baseline: fb-python-sdk in every worker.

Each worker builds ``fbclient.FBClient(Config(secret, event_url,
streaming_url), start_wait=30)`` in ``post_fork`` (its own websocket, threads
and copy of the flags) and stops it in ``worker_exit``, which sends the
events it still holds. Settings come from FLEET_* and FEATBIT_* variables set
by bench_fleet.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fleet_app

bind = os.environ["FLEET_BIND"]
workers = int(os.environ["FLEET_WORKERS"])
worker_class = "sync"
timeout = 120
graceful_timeout = 60
loglevel = "warning"


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    fleet_app.boot(fleet_app.start_fbclient)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    fleet_app.finish(fleet_app.stop_fbclient)
