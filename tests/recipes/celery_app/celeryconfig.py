"""Celery settings for tasks.py: a Redis broker and result backend."""

import os

broker_url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
result_backend = os.environ.get("CELERY_RESULT_BACKEND", "redis://127.0.0.1:6379/1")
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
