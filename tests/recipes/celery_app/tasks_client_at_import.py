"""tasks.py with fbclient's pattern: one client built at import time.

    celery -A tasks_client_at_import worker --pool=prefork --concurrency=3 --loglevel=INFO

The client is built in the worker's main process and every pool process
adopts it when it is forked.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from featbit_shm import Config, FBClient
from featbit_shm.integrations import celery as featbit_celery

app = Celery("tasks")
app.config_from_object("celeryconfig")
featbit_celery.setup(app)  # before the client: it then neither starts a sync process nor waits
client = FBClient(Config.from_env())


@app.task
def checkout(user_key: str) -> dict[str, Any]:
    """Decide one user's checkout theme (one evaluation event)."""
    detail = client.variation_detail("checkout-theme", {"key": user_key, "name": user_key}, "classic")
    return {"pid": os.getpid(), "user": user_key, "theme": detail.variation, "kind": detail.kind.value}
