"""A complete gunicorn config for featbit_shm, driven by environment variables.

    gunicorn -c gunicorn_hooks/featbit.conf.py app:app

FEATBIT_* configure featbit_shm (see README); GUNICORN_BIND and
GUNICORN_WORKERS the server (defaults 127.0.0.1:8000 and 4).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gunicorn_hooks import *  # noqa: F403

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "4"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
preload_app = os.environ.get("GUNICORN_PRELOAD", "0").lower() in ("1", "true", "yes")
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
# Workers switch to this account after the fork (the hooks share the store with its group).
if os.environ.get("GUNICORN_USER"):
    user = os.environ["GUNICORN_USER"]
if os.environ.get("GUNICORN_GROUP"):
    group = os.environ["GUNICORN_GROUP"]
