"""The app's own tests: no FeatBit server, flags loaded by each test.

Run with ``pytest test_app.py`` (FastAPI's TestClient needs ``pip install httpx2``).
"""

from __future__ import annotations

import json
import os

from app import app
from fastapi.testclient import TestClient

import featbit_shm
from featbit_shm.testing import builders

os.environ["FEATBIT_OFFLINE"] = "1"  # before the lifespan builds the client: no network, no sync process


def load_flags(*flags: dict) -> None:
    """Replace the flags of this process's client."""
    assert featbit_shm.get().initialize_from_external_json(json.dumps(builders.data_sync(flags)))


def test_the_theme_comes_from_the_flag() -> None:
    with TestClient(app) as http:  # runs the lifespan
        load_flags(builders.flag("checkout-theme", variations=["new", "classic"], variation_type="string"))
        answer = http.get("/", params={"user": "ann"}).json()
        assert (answer["theme"], answer["kind"]) == ("new", "Fallthrough")


def test_the_flag_switched_off_serves_its_off_variation() -> None:
    with TestClient(app) as http:
        load_flags(
            builders.flag("checkout-theme", variations=["new", "classic"], variation_type="string", enabled=False)
        )
        answer = http.get("/", params={"user": "ann"}).json()
        assert (answer["theme"], answer["kind"]) == ("classic", "Off")
