"""A Celery app whose task evaluates a flag with featbit_shm, as a user would
(tests/test_celery.py runs it under a real prefork worker).

The broker is kombu's filesystem transport and the result backend Celery's
``file://`` backend, both in the folder named by ``FBSHM_CELERY_DIR``: no
broker server. How the app configures featbit_shm is chosen by
``FBSHM_CELERY_CONFIG``:

* ``env``: nothing here; ``featbit_shm.get()`` reads the FEATBIT_* variables
  of the worker's environment (the twelve-factor way);
* ``set_config``: ``featbit_shm.set_config(Config(...))`` at import, in the
  Celery master, from the app's own variables (``APP_FEATBIT_*``), as a
  Django settings module does; the FEATBIT_* connection variables are unset;
* ``client_at_import``: ``client = FBClient(Config.from_env())`` at module
  level, fbclient's own pattern: the client is built in the Celery master,
  and the pool children fork with it.

With ``env`` and ``set_config`` each pool child builds its own client
lazily, on its first task.
The test process imports only :func:`make_app` (to send tasks by name); the
worker's app is made at import when ``FBSHM_CELERY_DIR`` is set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, shared_task

import featbit_shm
from featbit_shm import Config, FBClient

FOLDER_VARIABLE = "FBSHM_CELERY_DIR"
CONFIG_VARIABLE = "FBSHM_CELERY_CONFIG"
TASK = "featbit_shm_tests.evaluate"

client: FBClient | None = None  # the module-level client of ``client_at_import``


def make_app(folder: str) -> Celery:
    """A Celery app on the filesystem broker and result backend under ``folder``."""
    base = Path(folder)
    queue, control, results = base / "queue", base / "control", base / "results"
    for path in (queue, control, results):
        path.mkdir(parents=True, exist_ok=True)
    app = Celery("featbit_shm_tests", broker="filesystem://", backend=f"file://{results}")
    app.conf.update(
        broker_transport_options={
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(control),
            "polling_interval": 0.05,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,  # a task waits in the queue, not behind a busy child
        worker_enable_remote_control=False,  # no pidbox fanout on the filesystem broker
        worker_hijack_root_logger=False,
        task_acks_late=False,
    )
    return app


@shared_task(name=TASK)  # type: ignore[untyped-decorator]  # celery ships no types
def evaluate(flag_key: str, user_key: str, pause: float = 0.0) -> dict[str, Any]:
    """Evaluate one flag for one user (one evaluation event) in this pool child."""
    fb = client if client is not None else featbit_shm.get()
    detail = fb.variation_detail(flag_key, {"key": user_key, "name": user_key, "country": "us"}, "default")
    if pause:
        time.sleep(pause)  # keeps this child busy, so the next task goes to another one
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "generation": fb.generation,
        "value": detail.variation,
        "kind": detail.kind.value,
        "user": user_key,
    }


if os.environ.get(FOLDER_VARIABLE):  # the worker: `celery -A tests.celery_app worker`
    app = make_app(os.environ[FOLDER_VARIABLE])
    if os.environ.get(CONFIG_VARIABLE) == "set_config":
        featbit_shm.set_config(
            Config(
                os.environ["APP_FEATBIT_SECRET"],
                os.environ["APP_FEATBIT_EVENTS"],
                os.environ["APP_FEATBIT_STREAMING"],
                namespace=os.environ["APP_FEATBIT_NAMESPACE"],
            )
        )
    elif os.environ.get(CONFIG_VARIABLE) == "client_at_import":
        client = FBClient(Config.from_env())
