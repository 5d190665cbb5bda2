"""Tokens, scopes, origins, per-client caps and TURN credentials: the pure parts, then the real server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time

import aiohttp
import pytest
from conftest import make_server_config, serve_app
from hardening_helpers import Monitor

from models.errors import AuthError
from streaming.auth import (
    AccessConfig,
    check_access_config,
    mint_token,
    origin_allowed,
    resolve_access,
    turn_credentials,
    verify_token,
)
from streaming.cli import main as cli_main
from streaming.client import Client, ServerError

SECRET = b"0123456789abcdef-test-secret"
TURN_SECRET = b"turn-shared-secret"


# -- pure -----------------------------------------------------------------------------------------------
def test_a_token_carries_its_grant_and_only_its_grant():
    token = mint_token(SECRET, ttl_s=60, models=["pitch"], watch=True, max_sessions=2, subject="alice", now=1000)
    grant = verify_token(SECRET, token, now=1030)
    assert grant.models == frozenset({"pitch"}) and grant.watch and not grant.share
    assert grant.max_sessions == 2 and grant.subject == "alice" and grant.expires_at == 1060
    grant.check_start("pitch", share=False)
    grant.check_watch()
    with pytest.raises(AuthError) as e:
        grant.check_start("testcard", share=False)
    assert (e.value.status, e.value.reason, e.value.code) == (403, "scope", "forbidden")
    with pytest.raises(AuthError, match="may not share"):
        grant.check_start("pitch", share=True)
    every = verify_token(SECRET, mint_token(SECRET, ttl_s=60, share=True), now=time.time())
    every.check_start("anything", share=True)
    with pytest.raises(AuthError, match="may not watch"):
        every.check_watch()


def test_forged_expired_and_malformed_tokens_are_refused():
    token = mint_token(SECRET, ttl_s=60, now=1000)
    with pytest.raises(AuthError) as expired:
        verify_token(SECRET, token, now=1060)
    assert expired.value.reason == "expired" and expired.value.status == 401
    with pytest.raises(AuthError, match="signature"):
        verify_token(b"another-secret-of-enough-length", token, now=1001)
    version, payload, signature = token.split(".")
    tampered_payload = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(payload + "==").replace(b'"share":false', b'"share":true')
    ).rstrip(b"=").decode()
    with pytest.raises(AuthError, match="signature"):
        verify_token(SECRET, f"{version}.{tampered_payload}.{signature}", now=1001)
    for bad in ("", "cc1", "cc1.a.b.c", "xx1.a.b", "cc1." + "a" * 5000 + ".b"):
        with pytest.raises(AuthError) as e:
            verify_token(SECRET, bad, now=1001)
        assert e.value.reason == "bad_token"
    with pytest.raises(ValueError):
        mint_token(b"short", ttl_s=60)


def test_origins_same_origin_listed_or_absent():
    assert origin_allowed(None, "127.0.0.1:8080", ())  # not a browser page
    assert origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080", ())  # the server's own page
    assert not origin_allowed("http://evil.example", "127.0.0.1:8080", ())
    assert not origin_allowed("null", "127.0.0.1:8080", ())
    assert origin_allowed("https://app.example.org", "api.example.org", ("https://app.example.org",))
    assert not origin_allowed("https://app.example.org.evil.example", "api.example.org", ("https://app.example.org",))
    assert origin_allowed("http://anything", "h", ("*",))


def test_turn_credentials_follow_the_rest_scheme_coturn_checks():
    username, credential = turn_credentials(TURN_SECRET, "alice", ttl_s=600, now=1_000_000)
    assert username == "1000600:alice"
    expected = base64.b64encode(hmac.new(TURN_SECRET, b"1000600:alice", hashlib.sha1).digest()).decode()
    assert credential == expected


def test_a_public_address_needs_a_secret_or_an_explicit_no_auth():
    with pytest.raises(ValueError, match="needs tokens"):
        check_access_config(AccessConfig(), "0.0.0.0")
    with pytest.raises(ValueError, match="needs tokens"):
        check_access_config(AccessConfig(), "")
    check_access_config(AccessConfig(no_auth=True), "0.0.0.0")
    check_access_config(AccessConfig(secret=SECRET), "0.0.0.0")
    for host in ("127.0.0.1", "::1", "localhost"):
        check_access_config(AccessConfig(), host)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        check_access_config(AccessConfig(secret=b"short"), "127.0.0.1")


def test_clients_without_tokens_are_keyed_by_address_and_loopback_is_uncapped():
    config = AccessConfig(max_sessions_per_client=3)
    assert resolve_access(config, None, "127.0.0.1").max_sessions is None
    remote = resolve_access(config, None, "203.0.113.7")
    assert remote.client == "ip:203.0.113.7" and remote.max_sessions == 3
    assert not remote.authenticated
    token = mint_token(SECRET, ttl_s=60, max_sessions=1)
    with_secret = AccessConfig(secret=SECRET, max_sessions_per_client=3)
    assert resolve_access(with_secret, token, "127.0.0.1").max_sessions == 1  # the token's own cap wins
    assert resolve_access(with_secret, mint_token(SECRET, ttl_s=60), "::1").max_sessions == 3


def test_the_token_command_prints_a_token_the_server_accepts(tmp_path, capsys):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    args = ["token", "--auth-secret-file", str(secret_file), "--models", "pitch", "testcard", "--watch",
            "--max-sessions", "3", "--ttl", "120", "--subject", "bob"]
    assert cli_main(args) == 0
    grant = verify_token(SECRET, capsys.readouterr().out.strip())
    assert grant.models == frozenset({"pitch", "testcard"}) and grant.watch and grant.max_sessions == 3
    assert grant.subject == "bob" and grant.expires_at - time.time() == pytest.approx(120, abs=5)
    assert cli_main(["token", "--auth-secret-file", str(tmp_path / "missing")]) == 2


# -- the real server ------------------------------------------------------------------------------------
@pytest.fixture
async def secured():
    access = AccessConfig(
        secret=SECRET,
        allowed_origins=("https://app.example.org",),
        max_sessions_per_client=4,
        turn_secret=TURN_SECRET,
        turn_urls=("turn:turn.example.org:3478?transport=udp",),
        turn_ttl_s=600,
    )
    server, runner = await serve_app(make_server_config(models=("pitch", "testcard"), access=access))
    try:
        yield server
    finally:
        await runner.cleanup()


def token(**grant) -> str:
    return mint_token(SECRET, ttl_s=grant.pop("ttl_s", 600), **grant)


async def _status(http: aiohttp.ClientSession, method: str, url: str, **kw) -> tuple[int, dict]:
    async with http.request(method, url, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        return r.status, body


async def test_sessions_listings_and_viewers_need_a_token_with_the_scope(secured):
    monitor_token = token(models=["pitch"])
    async with Monitor(f"{secured.ws_url}?token={monitor_token}") as monitor, aiohttp.ClientSession() as http:
        # no token, a forged one, an expired one: refused before any WebSocket exists
        for query in ("", "?token=cc1.x.y", f"?token={token(ttl_s=0.001)}"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(secured.ws_url + query)
            assert refused.value.status == 401
        assert (await _status(http, "POST", f"{secured.http_url}/offer", json={}))[0] == 401
        assert (await _status(http, "GET", f"{secured.http_url}/streams"))[0] == 401
        assert (await _status(http, "GET", f"{secured.http_url}/config"))[0] == 401
        assert (await _status(http, "GET", f"{secured.http_url}/metrics"))[0] == 401
        # a token for pitch only: testcard and sharing are forbidden, pitch starts
        pitch_only = token(models=["pitch"])
        async with Client(f"{secured.ws_url}?token={pitch_only}") as client:
            with pytest.raises(ServerError) as forbidden:
                await client.start("testcard")
            assert forbidden.value.code == "forbidden"
            with pytest.raises(ServerError, match="may not share"):
                await client.start("pitch", input_sample_rate_hz=16_000, share=True)
            with pytest.raises(ServerError, match="may not watch"):
                await client.watch("whatever")
            await client.start("pitch", input_sample_rate_hz=16_000)
        # listing shared streams takes the watch scope (Bearer header works as well as ?token=)
        bearer = {"Authorization": f"Bearer {pitch_only}"}
        status, body = await _status(http, "GET", f"{secured.http_url}/streams", headers=bearer)
        assert status == 403 and body["code"] == "forbidden"
        sharer = token(models=["testcard"], share=True)
        watcher = token(models=[], watch=True)
        async with Client(f"{secured.ws_url}?token={sharer}") as producer, \
                Client(f"{secured.ws_url}?token={watcher}") as viewer:
            ready = await producer.start("testcard", share=True)
            status, body = await _status(http, "GET", f"{secured.http_url}/streams?token={watcher}")
            assert status == 200 and [s["session"] for s in body["streams"]] == [ready["session"]]
            assert (await viewer.watch(ready["session"]))["type"] == "watching"
            await viewer.stop()
            with pytest.raises(ServerError, match="may not start"):
                await viewer.start("pitch")  # a watch-only token starts nothing
        report = await monitor.finish()
        metrics = (await (await http.get(f"{secured.http_url}/metrics", headers=bearer)).text())
    assert 'causalcast_refusals_total{endpoint="/ws",reason="no_token"} 1.0' in metrics
    assert 'causalcast_refusals_total{endpoint="/ws",reason="expired"} 1.0' in metrics
    assert 'causalcast_refusals_total{endpoint="/streams",reason="scope"} 1.0' in metrics
    report.assert_unaffected()


async def test_a_token_holds_at_most_its_sessions(secured):
    capped = token(models=["pitch"], max_sessions=2)
    clients = [Client(f"{secured.ws_url}?token={capped}") for _ in range(3)]
    try:
        for c in clients:
            await c.connect()
        await clients[0].start("pitch", input_sample_rate_hz=16_000)
        await clients[1].start("pitch", input_sample_rate_hz=16_000)
        with pytest.raises(ServerError) as refused:
            await clients[2].start("pitch", input_sample_rate_hz=16_000)
        assert "holds 2 sessions" in refused.value.message["message"]
        await clients[0].stop()
        await clients[2].start("pitch", input_sample_rate_hz=16_000)  # a slot came back
    finally:
        for c in clients:
            await c.close()
    metrics = secured.engine.metrics.render().decode()
    assert 'causalcast_sessions_refused_total{model="pitch",reason="client_sessions"} 1.0' in metrics
    assert secured.engine.clients.count(f"token:{verify_token(SECRET, capped).token_id}") == 0


async def test_foreign_pages_cannot_connect_and_cors_is_explicit(secured):
    ok = token(models=["pitch"], watch=True)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{secured.ws_url}?token={ok}", origin="https://evil.example")
        assert refused.value.status == 403
        own = f"http://127.0.0.1:{secured.port}"
        for origin in (own, "https://app.example.org"):
            ws = await http.ws_connect(f"{secured.ws_url}?token={ok}", origin=origin)
            await ws.close()
        status, body = await _status(http, "POST", f"{secured.http_url}/offer?token={ok}", json={},
                                     headers={"Origin": "https://evil.example"})
        assert status == 403 and body["code"] == "forbidden"
        preflight = {"Origin": "https://app.example.org", "Access-Control-Request-Method": "POST"}
        async with http.options(f"{secured.http_url}/offer", headers=preflight) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
            assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        async with http.options(f"{secured.http_url}/offer", headers={"Origin": "https://evil.example"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
        listed = {"Origin": "https://app.example.org"}
        async with http.get(f"{secured.http_url}/config?token={ok}", headers=listed) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.org"


async def test_healthz_public_part_and_turn_credentials_per_client(secured):
    ok = token(models=["pitch"], subject="carol")
    async with aiohttp.ClientSession() as http:
        status, public = await _status(http, "GET", f"{secured.http_url}/healthz")
        assert status == 200 and public == {"status": "ok", "protocol": 1}
        status, detail = await _status(http, "GET", f"{secured.http_url}/healthz?token={ok}")
        assert {"version", "pid", "engine", "models"} <= set(detail)
        before = time.time()
        status, config = await _status(http, "GET", f"{secured.http_url}/config?token={ok}")
    assert status == 200
    (turn,) = [s for s in config["ice_servers"] if "username" in s]
    expiry, subject = turn["username"].split(":")
    assert subject == "carol" and before + 590 <= int(expiry) <= time.time() + 610
    digest = hmac.new(TURN_SECRET, turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(digest).decode()
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp"]


async def test_a_client_cannot_hold_slots_with_offers_it_never_connects():
    from streaming.client.webrtc import loopback_offer_sdp
    from streaming.transports.webrtc import RtcConfig

    access = AccessConfig(secret=SECRET, max_pending_offers_per_client=3)
    config = make_server_config(models=("pitch",), access=access,
                                webrtc=RtcConfig(loopback_only=True, connect_timeout_s=1.5))
    server, runner = await serve_app(config)
    hoarder, other = token(models=["pitch"]), token(models=["pitch"])
    try:
        async with Monitor(f"{server.ws_url}?token={other}") as monitor, aiohttp.ClientSession() as http:
            sdp = await loopback_offer_sdp()  # an offer whose peer never answers ICE

            async def offer(who: str) -> tuple[int, dict]:
                body = {"type": "offer", "sdp": sdp, "model": "pitch"}
                return await _status(http, "POST", f"{server.http_url}/offer?token={who}", json=body)

            for _ in range(3):
                assert (await offer(hoarder))[0] == 200
            status, body = await offer(hoarder)
            assert status == 503 and "have not connected" in body["message"]
            assert (await offer(other))[0] == 200  # another client is not affected
            await asyncio.sleep(2.0)  # the connect timeout ends the unconnected peers and frees the client
            assert (await offer(hoarder))[0] == 200
            report = await monitor.finish()
    finally:
        await runner.cleanup()
    metrics = server.engine.metrics.render().decode()
    assert 'causalcast_refusals_total{endpoint="/offer",reason="client_pending_offers"} 1.0' in metrics
    report.assert_unaffected()


async def test_a_client_at_its_session_cap_is_refused_at_offer_time_over_webrtc():
    """A WebRTC session is counted against its client when it connects; an offer over the cap is refused first."""
    import numpy as np

    from streaming.client.webrtc import ArrayAudioTrack, RtcClient
    from streaming.transports.webrtc import RtcConfig

    config = make_server_config(models=("pitch",), access=AccessConfig(secret=SECRET),
                                webrtc=RtcConfig(loopback_only=True))
    server, runner = await serve_app(config)
    path = f"/offer?token={token(models=['pitch'], max_sessions=1)}"
    first, second = RtcClient(server.http_url, offer_path=path), RtcClient(server.http_url, offer_path=path)
    silence = np.zeros(48_000 * 3, np.float32)
    try:
        await first.connect("pitch", audio=ArrayAudioTrack(silence))
        await first.wait_connected(10)
        await first.expect("ready")
        with pytest.raises(Exception) as refused:
            await second.connect("pitch", audio=ArrayAudioTrack(silence))
        assert refused.value.status == 503 and refused.value.code == "capacity"
        assert "already holds 1 sessions" in refused.value.message["message"]
    finally:
        await first.close()
        await second.close()
        await runner.cleanup()
