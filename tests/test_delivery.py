"""How the sync process reaches FeatBit's insight endpoint: TLS with a private CA, proxies (issue 18.4).

Reproduces: "Insight POSTs ignore HTTP(S)_PROXY while the websocket honours
it: behind a mandatory proxy flags work and every event fails", and asks
that a custom CA bundle work for both connections with one setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featbit_shm import Config, FBClient
from featbit_shm.sync.delivery import InsightClient, proxy_for
from featbit_shm.testing import builders as b
from featbit_shm.testing.server import FeatBitStandIn

from .sync_helpers import eventually, sync_env
from .tls_relay import TLSRelay, make_ca


@pytest.fixture
def server() -> Iterator[FeatBitStandIn]:
    with FeatBitStandIn(flags=[b.flag("f", variations=["on", "off"], variation_type="string", updated_at=1000)]) as s:
        yield s


def test_the_proxy_variables_are_read_as_urllib_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://featbit.example/api/public/insight/track") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:3128")
    proxy = proxy_for("https://featbit.example/api/public/insight/track")
    assert proxy is not None and (proxy.host, proxy.port) == ("proxy.corp", 3128)
    assert proxy.authorization == "Basic dXNlcjpwQHNz"  # user:p@ss
    assert proxy_for("http://featbit.example/x") is None  # HTTPS_PROXY is for https only
    monkeypatch.setenv("NO_PROXY", "featbit.example,.internal")
    assert proxy_for("https://featbit.example/x") is None
    assert proxy_for("https://a.internal/x") is None
    assert proxy_for("https://other.example/x") is not None


@pytest.mark.subprocess
def test_a_private_ca_bundle_serves_the_websocket_and_the_insight_endpoint_alike(server: FeatBitStandIn, tmp_path: Path) -> None:
    try:
        ca, cert, key = make_ca(tmp_path)
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"no openssl to make a test CA: {exc}")
    with TLSRelay(server.port, cert, key) as relay:
        base = f"127.0.0.1:{relay.port}"
        # Without the bundle the private CA is not trusted: no request gets through.
        assert InsightClient(f"https://{base}", server.secret)(b"[]").status is None
        assert InsightClient(f"https://{base}", server.secret, ca_bundle=str(ca))(b"[]").status == 200
        with sync_env(server) as env:
            env.spawn(streaming_url=f"wss://{base}", event_url=f"https://{base}", ca_bundle=str(ca))
            client = FBClient(Config(server.secret, f"https://{base}", f"wss://{base}", namespace=env.namespace, start_sync=False, ca_bundle=str(ca)), start_wait=30)
            try:
                assert client.variation("f", {"key": "tls-0"}, "d") == "on"  # flags came over wss
                assert client.flush_and_wait(30) is True  # and events over https
                assert eventually(lambda: any(e["user"]["keyId"] == "tls-0" for e in server.events), timeout=15)
                assert relay.handshakes >= 3
            finally:
                client.stop()


def test_env_variables_name_the_ca_bundle_for_a_sync_process_a_client_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # One configuration plane: FEATBIT_CA_BUNDLE reaches a Config and the sync process it starts.
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not checked here")
    monkeypatch.setenv("FEATBIT_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("FEATBIT_SHM_EVENT_CONCURRENCY", "7")
    config = Config("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "https://featbit.example", "wss://featbit.example", start_sync=False)
    settings = config.sync_settings()
    assert (settings.ca_bundle, settings.event_concurrency) == (str(bundle), 7)
    env = settings.to_env()
    assert (env["FEATBIT_CA_BUNDLE"], env["FEATBIT_SHM_EVENT_CONCURRENCY"]) == (str(bundle), "7")


@pytest.mark.subprocess
def test_flags_and_events_both_go_through_a_mandatory_proxy(server: FeatBitStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 18.4: behind a mandatory proxy flags worked and every event failed.
    from featbit_shm.testing.proxy import ForwardProxy

    with ForwardProxy(auth=("fb", "s3cret")) as proxy, sync_env(server) as env:
        for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        # websocket-client bypasses 127.0.0.1 unless NO_PROXY says otherwise: name another host.
        monkeypatch.setenv("NO_PROXY", "bypass.invalid")
        env.spawn()  # the sync process inherits the proxy variables (launcher)
        client = FBClient(Config(server.secret, server.event_url, server.streaming_url, namespace=env.namespace, start_sync=False), start_wait=30)
        try:
            assert client.variation("f", {"key": "proxied-0"}, "d") == "on"
            assert client.flush_and_wait(30) is True
            assert eventually(lambda: any(e["user"]["keyId"] == "proxied-0" for e in server.events), timeout=15)
            assert proxy.count("CONNECT") >= 1  # the websocket, tunnelled
            assert proxy.count("POST") >= 1  # the insight requests, forwarded
            assert not proxy.refused  # with the credentials from the proxy URL
        finally:
            client.stop()
