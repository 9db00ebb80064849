"""Celery tasks that evaluate a FeatBit flag with featbit-shm.

    celery -A tasks worker --pool=prefork --concurrency=3 --loglevel=INFO

The worker's main process starts the host's sync process before it forks
the pool and stops it when the worker stops; each pool process evaluates
from shared memory.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

import featbit_shm
from featbit_shm.integrations import celery as featbit_celery

app = Celery("tasks")
app.config_from_object("celeryconfig")
featbit_celery.setup(app)


@app.task
def checkout(user_key: str) -> dict[str, Any]:
    """Decide one user's checkout theme (one evaluation event)."""
    client = featbit_shm.get()  # this pool process's client, built on its first task
    detail = client.variation_detail("checkout-theme", {"key": user_key, "name": user_key}, "classic")
    return {"pid": os.getpid(), "user": user_key, "theme": detail.variation, "kind": detail.kind.value}
