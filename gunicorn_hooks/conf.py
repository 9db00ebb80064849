"""A complete gunicorn config for featbit_shm, importable from an install.

    gunicorn -c python:gunicorn_hooks.conf app:app

FEATBIT_* configure featbit_shm (docs/CONFIGURATION.md); GUNICORN_BIND,
GUNICORN_WORKERS, GUNICORN_WORKER_CLASS, GUNICORN_THREADS, GUNICORN_PRELOAD,
GUNICORN_MAX_REQUESTS, GUNICORN_USER and GUNICORN_GROUP the server (defaults
127.0.0.1:8000, 4 sync workers). To combine the hooks with a config of your
own, import them there instead: ``from gunicorn_hooks import *``.
"""

import os

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
