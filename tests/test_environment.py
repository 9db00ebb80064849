"""One reader of the environment, and Config options that work or are refused (issue 15)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from featbit_shm import Config, ConfigError
from featbit_shm._runtime.environment import (
    VARIABLES,
    env_bool,
    env_float,
    env_int,
    env_str,
    env_tristate,
    markdown_table,
)
from featbit_shm.sync import SyncSettings

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_SOURCES = sorted([*(ROOT / "featbit_shm").rglob("*.py"), *(ROOT / "gunicorn_hooks").rglob("*.py")])
ENVIRONMENT_MODULE = ROOT / "featbit_shm" / "_runtime" / "environment.py"
ONLINE = ("secret", "http://127.0.0.1:9", "ws://127.0.0.1:9")


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "On"])
def test_every_true_spelling_is_true(raw: str) -> None:
    assert env_bool("FEATBIT_OFFLINE", {"FEATBIT_OFFLINE": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", " off "])
def test_every_false_spelling_is_false(raw: str) -> None:
    assert env_bool("FEATBIT_SHM_AUTOSTART", {"FEATBIT_SHM_AUTOSTART": raw}) is False


def test_unset_and_empty_mean_the_default() -> None:
    assert env_bool("FEATBIT_SHM_AUTOSTART", {}) is True
    assert env_bool("FEATBIT_SHM_AUTOSTART", {"FEATBIT_SHM_AUTOSTART": "  "}) is True
    assert env_tristate("FEATBIT_SHM_SHARED", {}) is None
    assert env_str("FEATBIT_NAMESPACE", {}) == "default"
    assert env_float("FEATBIT_SHM_IDLE_TIMEOUT", {}) is None
    assert env_int("FEATBIT_SHM_RING_BYTES", {}) == 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("read", "name", "raw"),
    [
        (env_bool, "FEATBIT_OFFLINE", "maybe"),
        (env_tristate, "FEATBIT_SHM_SHARED", "2"),
        (env_float, "FEATBIT_EVENTS_FLUSH_INTERVAL", "soon"),
        (env_float, "FEATBIT_SHM_IDLE_TIMEOUT", "-1"),
        (env_float, "FEATBIT_START_WAIT", "nan"),
        (env_int, "FEATBIT_SHM_RING_BYTES", "1e6"),
        (env_int, "FEATBIT_SHM_STORE_UID", "root"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(read: Any, name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        read(name, {name: raw})


def test_a_variable_missing_from_the_table_cannot_be_read() -> None:
    with pytest.raises(KeyError):
        env_bool("FEATBIT_NO_SUCH_THING", {})


def _server_setting(node: ast.AST) -> bool:
    """gunicorn's own settings (GUNICORN_BIND, ...) in the shipped gunicorn config file."""
    if isinstance(node, ast.Call):
        first = node.args[0] if node.args else None
    elif isinstance(node, ast.Subscript):
        first = node.slice
    else:
        return False
    return isinstance(first, ast.Constant) and str(first.value).startswith("GUNICORN_")


def _environment_reads(path: Path) -> list[str]:
    """Places in a module that read os.environ / os.getenv (writes are fine)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if _server_setting(node):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func
            if target.attr == "getenv" or (
                target.attr == "get" and isinstance(target.value, ast.Attribute) and target.value.attr == "environ"
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr == "environ":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_environment_module_reads_variables() -> None:
    stray = [place for path in PACKAGE_SOURCES if path != ENVIRONMENT_MODULE for place in _environment_reads(path)]
    assert stray == [], f"read the variable through featbit_shm._runtime.environment instead: {stray}"


def test_every_featbit_variable_named_in_the_code_is_in_the_table() -> None:
    named = set()
    for path in PACKAGE_SOURCES:
        named |= set(re.findall(r"\bFEATBIT_[A-Z_]+[A-Z]\b", path.read_text(encoding="utf-8")))
    assert named - set(VARIABLES) == set()


def test_the_documented_table_is_the_table_in_the_code() -> None:
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([A-Z_]+)` \|", doc, re.MULTILINE)
    assert documented == list(VARIABLES)
    assert markdown_table() in doc  # kinds, defaults and meanings too
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/CONFIGURATION.md" in readme


# --------------------------------------------------------------------------- Config options


@pytest.mark.parametrize(
    ("option", "value"),
    [("events_max_in_queue", 20000), ("http", object()), ("websocket", object()), ("data_storage", object())],
)
def test_an_option_featbit_shm_cannot_honour_is_refused_by_name(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        Config(*ONLINE, **{option: value})


def test_fbclient_defaults_of_those_options_are_accepted() -> None:
    config = Config(*ONLINE, events_max_in_queue=10000, http=None, websocket=None)
    assert config.events_max_in_queue == 10000


def test_options_the_sync_process_reads_reach_it_through_the_variables() -> None:
    config = Config(
        *ONLINE,
        streaming_first_retry_delay=2.5,
        events_flush_interval=0.5,
        events_retry_interval=0.3,
        events_max_retries=4,
        namespace="ns-1",
        disable_events=True,
        event_ring_bytes=1 << 20,
    )
    settings = SyncSettings.from_env(config.to_env())
    assert (settings.streaming_first_retry_delay, settings.events_flush_interval) == (2.5, 0.5)
    assert (settings.events_retry_interval, settings.events_max_retries) == (0.3, 4)
    assert (settings.namespace, settings.disable_events, settings.env_secret) == ("ns-1", True, "secret")
    assert settings.ring_bytes == 1 << 20  # spare rings fit the workers' claims
    assert Config.from_env(config.to_env()).to_env() == config.to_env()


def test_sync_settings_name_the_variable_of_a_bad_url() -> None:
    env = {"FEATBIT_ENV_SECRET": "s", "FEATBIT_STREAMING_URL": "ftp://x", "FEATBIT_EVENT_URL": "http://x"}
    with pytest.raises(ConfigError, match="FEATBIT_STREAMING_URL"):
        SyncSettings.from_env(env)


def test_an_http_streaming_url_becomes_a_websocket_url_for_client_and_sync_process() -> None:
    # Issue 17: an http:// streaming URL was accepted, then crashed the sync process.
    config = Config("secret", "http://127.0.0.1:9", "https://featbit.example.com/prefix/")
    assert config.streaming_url == "wss://featbit.example.com/prefix"
    assert Config("secret", "http://127.0.0.1:9", "http://127.0.0.1:9").streaming_url == "ws://127.0.0.1:9"
    env = {"FEATBIT_ENV_SECRET": "s", "FEATBIT_STREAMING_URL": "http://127.0.0.1:5100", "FEATBIT_EVENT_URL": "http://x"}
    assert SyncSettings.from_env(env).streaming_url == "ws://127.0.0.1:5100"
