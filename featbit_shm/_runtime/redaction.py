"""No secret in any log line: a logging filter that scrubs them from every record.

The sync process is the one process that holds the env secret and the
connection tokens made from it (R-5, R-77: a token decodes to the secret).
Text it does not control reaches its log: a websocket handshake error quotes
the server's response, and an error page may echo the request line, token
included. So every record that reaches the sync process's log handlers
passes through :data:`REDACTOR`, which replaces

* any ``token=...`` query value,
* the secret itself, and every connection token this process has made,

with ``<redacted>``, in the message, its arguments and a formatted
traceback alike.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from typing import Final

_TOKEN_PARAM: Final = re.compile(r"(token=)[^&\s'\"<>]+")
MIN_SECRET: Final = 8  # shorter strings would redact ordinary words


class Redactor(logging.Filter):
    """Scrubs known secrets from log records (install on handlers)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: collections.deque[str] = collections.deque(maxlen=32)

    def add(self, secret: str) -> None:
        """Never log this string (the env secret, a token made from it)."""
        if len(secret) >= MIN_SECRET:
            with self._lock:
                if secret not in self._secrets:
                    self._secrets.append(secret)

    def redact(self, text: str) -> str:
        text = _TOKEN_PARAM.sub(r"\1<redacted>", text)
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, "<redacted>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


#: The process's redactor: the sync process installs it on its log handlers.
REDACTOR: Final = Redactor()


def install(secret: str = "") -> None:
    """Scrub secrets from every record the root logger's handlers emit."""
    REDACTOR.add(secret)
    for handler in logging.getLogger().handlers:
        if REDACTOR not in handler.filters:
            handler.addFilter(REDACTOR)
