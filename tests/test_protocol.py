"""The sans-I/O data-sync protocol: R-1, R-2, R-5..R-11, R-17..R-19."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from featbit_shm._core.protocol import (
    Backoff,
    Ignored,
    Pong,
    build_token,
    close_is_terminal,
    data_sync_request,
    decode_token,
    insight_url,
    parse_frame,
    redact,
    streaming_url,
)
from featbit_shm._core.wire import DataSyncMessage
from featbit_shm.testing import builders as b


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("ws://localhost:5100", "ws://localhost:5100/streaming?type=server&token=T"),
        ("ws://localhost:5100/", "ws://localhost:5100/streaming?type=server&token=T"),
        ("wss://x.com/featbit", "wss://x.com/featbit/streaming?type=server&token=T"),
        ("wss://x.com/featbit/", "wss://x.com/featbit/streaming?type=server&token=T"),
    ],
)
def test_r2_streaming_url_keeps_prefix(base: str, expected: str) -> None:
    assert streaming_url(base, "T") == expected


def test_r2_insight_url() -> None:
    assert insight_url("https://x.com/featbit/") == "https://x.com/featbit/api/public/insight/track"
    assert insight_url("http://localhost:5100") == "http://localhost:5100/api/public/insight/track"


def test_r77_token_urls_are_redacted() -> None:
    url = streaming_url("wss://x.com", build_token("a" * 44, 1, 0.5))
    assert "aaaa" not in redact(url) and redact(url).endswith("token=<redacted>")


R6 = [
    ("v3faJy3RCUO8d-EJiVdN6waRfGjfNan02Ms9c0LiTD6w", 1666018800754, 14, "QBPBSv3faJy3RCUO8d-BDDDQBZZQQXHPEJiVdN6waRfGjfNan02Ms9c0LiTD6w"),
    ("qJHQTVfsZUOu1Q54RLMuIQ-JtrIvNK-k-bARYicOTNQA", 1700000000000, 10, "QBQBSqJHQTVfsZUBXQQQQQQQQQQQOu1Q54RLMuIQ-JtrIvNK-k-bARYicOTNQA"),
    ("abcdefgh==", 1234567890123, 2, "QQWBSabBWSPHDXZUQBWScdefgh"),
]


@pytest.mark.parametrize(("secret", "t", "p", "token"), R6)
def test_r6_token_vectors(secret: str, t: int, p: int, token: str) -> None:
    stripped = secret.rstrip("=")
    fraction = (p + 0.5) / len(stripped)  # any draw that floors to p
    assert build_token(secret, t, fraction) == token


def test_r6_server_fixture_token_decodes() -> None:
    # Width 15 for the timestamp, with leading zeros: the decoder round-trip vector.
    secret, t = decode_token("QBPBHv3faJy3RCUO8d-QQBDDDQBZZQQXHPEJiVdN6waRfGjfNan02Ms9c0LiTD6w")
    assert (secret, t) == ("v3faJy3RCUO8d-EJiVdN6waRfGjfNan02Ms9c0LiTD6w", 1666018800754)


def test_r5_p_is_at_least_two() -> None:
    assert build_token("abcdef", 1000, 0.0)[:3] == "QQW"


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=8, max_size=60), st.integers(10**12, 10**13 - 1), st.floats(0, 0.999))
def test_r5_token_round_trips_through_the_server_decoder(secret: str, t: int, r: float) -> None:
    decoded, stamp = decode_token(build_token(secret, t, r))
    assert decoded.rstrip("=") == secret.rstrip("=") and stamp == t


def test_r7_data_sync_request() -> None:
    assert json.loads(data_sync_request(0)) == {"messageType": "data-sync", "data": {"timestamp": 0}}
    assert json.loads(data_sync_request(1674119927629))["data"]["timestamp"] == 1674119927629


def test_r8_parse_full_and_patch() -> None:
    frame = json.dumps({"messageType": "data-sync", "data": b.data_sync([b.flag("a")], event_type="patch")["data"]})
    parsed = parse_frame(frame)
    assert isinstance(parsed, DataSyncMessage) and parsed.event_type == "patch" and parsed.flags[0]["key"] == "a"


@pytest.mark.parametrize(
    "frame",
    ["{not json", "[]", '{"messageType":"hello","data":{}}', '{"messageType":"data-sync","data":{"eventType":"delta"}}', '{"messageType":"data-sync"}'],
)
def test_r11_g5_invalid_frames_are_ignored_never_raise(frame: str) -> None:
    assert isinstance(parse_frame(frame), Ignored)


def test_r9_pong() -> None:
    assert isinstance(parse_frame('{"messageType":"pong","data":{}}'), Pong)


@pytest.mark.parametrize(("code", "terminal"), [(4003, True), (1000, False), (1011, False), (1001, False), (None, False), (4000, False)])
def test_r17_r18_only_4003_is_terminal(code: int | None, terminal: bool) -> None:
    assert close_is_terminal(code) is terminal


def test_r19_backoff_is_jittered_exponential_capped_and_resets() -> None:
    low = Backoff(first=1.0, cap=60.0, rand=lambda: 0.0)
    assert [low.next_delay() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    high = Backoff(first=1.0, cap=60.0, rand=lambda: 0.999999)
    assert all(d <= 60 for d in (high.next_delay() for _ in range(50)))
    low.reset()
    assert low.next_delay() == 0.5
    with pytest.raises(ValueError):
        Backoff(first=0)
