"""Config.shared: which store an offline client with a bootstrap file reads."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from featbit_shm import Config


def under_uwsgi(monkeypatch: pytest.MonkeyPatch, **options: object) -> None:
    """Pretend this process is a uWSGI worker with these options (uwsgi.opt)."""
    monkeypatch.setitem(sys.modules, "uwsgi", types.SimpleNamespace(opt=options))


def test_offline_with_a_bootstrap_file_is_local_by_default(tmp_path: Path) -> None:
    assert Config(offline=True, bootstrap_file=tmp_path / "flags.json").shared is False


@pytest.mark.parametrize(
    "mule",
    [
        b"/srv/app/.venv/lib/python3.11/site-packages/featbit_shm/integrations/uwsgi_mule.py",
        b"/srv/app/.venv/lib/python3.11/site-packages/featbit_shm/uwsgi_mule.py",  # the former path
        [b"/srv/app/other_mule.py", b"/srv/lib/featbit_shm/integrations/uwsgi_mule.py"],  # several mules
    ],
)
def test_a_uwsgi_worker_whose_server_runs_the_featbit_mule_reads_the_shared_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mule: object
) -> None:
    # The mule serves the file; it cannot set FEATBIT_SHM_SHARED for its sibling workers.
    under_uwsgi(monkeypatch, master=b"true", mule=mule)
    assert Config(offline=True, bootstrap_file=tmp_path / "flags.json").shared is True


@pytest.mark.parametrize("options", [{}, {"mule": b"/srv/app/other_mule.py"}, {"mule": b""}])
def test_a_uwsgi_worker_without_the_featbit_mule_stays_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, options: dict[str, object]
) -> None:
    under_uwsgi(monkeypatch, **options)
    assert Config(offline=True, bootstrap_file=tmp_path / "flags.json").shared is False


def test_an_explicit_choice_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    under_uwsgi(monkeypatch, mule=b"/x/featbit_shm/integrations/uwsgi_mule.py")
    assert Config(offline=True, bootstrap_file=tmp_path / "flags.json", shared=False).shared is False
