"""Loud, rate-limited warnings for uses that cannot work in a forked process.

A pre-fork server runs the same code in many workers, often in a loop: one
misuse would log once per call per worker and drown the log. Each warning
here has a key and is logged at most once per ``every`` seconds per process
(a fork child starts with a fresh budget: its first misuse is worth seeing).
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("featbit_shm")

EVERY = 60.0
_last: dict[str, float] = {}
_lock = threading.Lock()


def warn_limited(key: str, message: str, *, every: float = EVERY, level: int = logging.WARNING) -> bool:
    """Log ``message`` (at WARNING, or ``level``) unless ``key`` was logged
    less than ``every`` seconds ago in this process. True when it was logged."""
    now = time.monotonic()
    with _lock:
        last = _last.get(key)
        if last is not None and now - last < every:
            return False
        _last[key] = now
    log.log(level, message)
    return True


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _last.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
