"""gunicorn config of the chaos soak: 8 gthread workers, preload, max_requests recycling.

The featbit_shm hooks are the shipped ones (``gunicorn_hooks``); SOAK_BIND,
SOAK_MAX_REQUESTS and SOAK_MAX_REQUESTS_JITTER come from the soak driver.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gunicorn_hooks import *  # noqa: F403

bind = os.environ["SOAK_BIND"]
workers = 8
worker_class = "gthread"
threads = 4
preload_app = True
max_requests = int(os.environ.get("SOAK_MAX_REQUESTS", "0"))
max_requests_jitter = int(os.environ.get("SOAK_MAX_REQUESTS_JITTER", "0"))
graceful_timeout = 10
timeout = 30
keepalive = 2
