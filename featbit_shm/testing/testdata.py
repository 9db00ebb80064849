"""``TestData``: flags for your unit tests, in this process, updatable.

No shared memory, no sync process, no socket: a :class:`TestData` holds
FeatBit wire entities (build them with :mod:`.builders`, or with the
shortcuts below) and serves them to offline clients it makes. An update
reaches every such client at once, and their flag-change listeners hear of
it the next time the client is used, as in production::

    from featbit_shm.testing import TestData, builders as b

    def test_banner_can_be_switched_off():
        td = TestData()
        td.set_value("welcome-banner", True)
        client = td.client()
        assert client.variation("welcome-banner", {"key": "u1"}, False) is True
        td.set_value("welcome-banner", False)
        assert client.variation("welcome-banner", {"key": "u1"}, True) is False
        td.update(b.flag("checkout", variations=["v1", "v2"], variation_type="string",
                         rules=[b.rule([b.cond("country", "Equal", "fr")], b.serve(1))]))
        assert client.variation("checkout", {"key": "u2", "country": "fr"}, "x") == "v2"

Clients made here are offline: they record no events (R-66), and are ready
at once (R-71). Evaluation is the production evaluator, over the same
compiled data a worker would map.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from .._core.dataset import DataSet
from .._core.wire import parse_data_sync
from ..client import FBClient
from ..config import Config
from . import builders


def _variations_for(value: Any) -> tuple[list[str], str, int]:
    """(variations, variation type, index of ``value``) for a flag serving ``value``."""
    if isinstance(value, bool):
        return ["true", "false"], "boolean", 0 if value else 1
    if isinstance(value, (int, float)):
        return [json.dumps(value)], "number", 0
    if isinstance(value, str):
        return [value], "string", 0
    return [json.dumps(value, separators=(",", ":"))], "json", 0


class TestData:
    """An in-process, updatable flag source for tests (see the module docstring)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, flags: Any = (), segments: Any = ()) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, dict[str, Any]] = {}
        self._segments: dict[str, dict[str, Any]] = {}
        self._clock = 1_700_000_000_000  # updatedAt of the next entity, ms (always newer)
        self._clients: weakref.WeakSet[FBClient] = weakref.WeakSet()
        self.update(*flags, *segments)

    # ------------------------------------------------------------------ data

    def update(self, *entities: Mapping[str, Any]) -> None:
        """Add or replace flags (wire JSON with a ``key``) and segments (with an
        ``id`` and ``included``); every client serves them from now on."""
        with self._lock:
            for entity in entities:
                item = dict(entity)
                self._clock += 1
                item["updatedAt"] = builders.iso_ms(self._clock)  # newer than anything before
                if "key" in item and "variations" in item:
                    self._flags[item["key"]] = item
                elif "id" in item and "included" in item:
                    self._segments[item["id"]] = item
                else:
                    raise ValueError(f"not a flag or a segment: {sorted(item)}")
            self._push()

    def set_value(self, key: str, value: Any) -> None:
        """A flag ``key`` that serves ``value`` to everyone (bool, number,
        string, or anything JSON for a json flag)."""
        variations, kind, index = _variations_for(value)
        self.update(builders.flag(key, variations=variations, variation_type=kind, fallthrough=builders.serve(index), off=len(variations) - 1))

    def delete(self, key: str) -> None:
        """Remove (archive) flag ``key``: clients answer "flag not found"."""
        with self._lock:
            self._flags.pop(key, None)
            self._push()

    @property
    def dataset(self) -> DataSet:
        doc = builders.data_sync(self._flags.values(), self._segments.values())
        dataset, _changes = DataSet().apply(parse_data_sync(doc["data"]))
        return dataset

    def _push(self) -> None:
        dataset = self.dataset
        for client in list(self._clients):
            client._use_memory(dataset)

    # ------------------------------------------------------------------ clients

    def client(self, **config: Any) -> FBClient:
        """An offline FBClient serving this data (``config``: more Config options, e.g. ``defaults``)."""
        client = FBClient(Config(offline=True, shared=False, **config), start_wait=0)
        with self._lock:
            self._clients.add(client)
            client._use_memory(self.dataset)
        return client
