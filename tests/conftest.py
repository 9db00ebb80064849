from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Tests start their own sync processes; an online client must not start one
# behind their back (test_sync.py checks auto-start on its own).
os.environ["FEATBIT_SHM_AUTOSTART"] = "0"

from featbit_shm import Config, FBClient
from featbit_shm.testing import builders as b

FIXTURES = Path(__file__).parent / "fixtures"


def offline_client(*flags: dict[str, Any], segments: tuple[dict[str, Any], ...] = (), **config: Any) -> FBClient:
    """An offline client loaded with the given wire flags and segments."""
    client = FBClient(Config(offline=True, **config))
    assert client.initialize_from_external_json(json.dumps(b.data_sync(flags, segments)))
    return client
