"""Options of the chaos soak (``-m soak``; see test_soak.py).

``pytest_addoption`` runs only for conftest files pytest reads before
collecting (those of the paths on the command line), so run the soak as
``pytest -m soak tests/soak --minutes 1``; the test reads the options with
defaults, so collecting ``tests/`` without them is fine.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("soak", "chaos soak (issue 9)")
    group.addoption("--minutes", type=float, default=5.0, help="how long the soak injects faults (default 5)")
    group.addoption("--soak-seed", type=int, default=9, help="seed of the fault and data schedule (default 9)")
    group.addoption("--soak-report", default=None, help="where to write the JSON report (default tests/soak/results/soak-<minutes>min.json)")
