"""Unfriendly clients against the real server on 127.0.0.1, each beside a well-behaved monitor session.

Every probe here was found against a running server (issue 18): it must get a clear error or a quiet
close, and the monitor's chunks and ping round trips must not suffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
from conftest import make_server_config, serve_app
from hardening_helpers import Monitor

from streaming.client import Client, ServerError
from streaming.engine.scheduler import AdmissionLimits


async def test_a_refusal_on_a_stale_cost_estimate_is_probed_and_admission_recovers(start_server):
    """What a burst leaves behind: a batch size measured slow once and never run again.

    A client's burst starved the worker while two pitch sessions stepped together, so the estimate for a
    batch of 2 read ~125 ms; every second pitch session was then refused and, because a refused size never
    runs, the estimate never came back down. Here the burst's result is put in place directly; the
    estimate must be re-measured (probed) once it is stale, and the second session admitted.
    """
    limits = AdmissionLimits(cost_fresh_s=1.0, cost_half_life_s=3600.0, probe_interval_s=0.5)
    server = await start_server(("pitch", "testcard"), limits=limits)
    costs = server.engine.scheduler.costs["pitch"]
    async with Monitor(server.ws_url) as monitor:
        for _ in range(300):
            costs.observe(2, 2, 0.125)
        async with Client(server.ws_url) as second:
            with pytest.raises(ServerError) as refused:  # fresh: the measurement stands
                await second.start("pitch", input_sample_rate_hz=16_000)
            assert "2 'pitch' sessions would need" in refused.value.message["message"]
            await asyncio.sleep(1.2)  # stale now; no aging (hour-long half-life): only a probe can help
            ready = await second.start("pitch", input_sample_rate_hz=16_000)
            assert ready["type"] == "ready"
            assert costs.step_seconds(2) < 0.02
            async with Client(server.ws_url) as third:
                await third.start("testcard")  # another model is not refused on pitch's account
        report = await monitor.finish()
    metrics = server.engine.metrics.render().decode()
    assert 'causalcast_cost_probes_total{model="pitch"} 1.0' in metrics
    assert 'causalcast_sessions_refused_total{model="pitch",reason="utilization"} 1.0' in metrics
    report.assert_unaffected()


async def test_deeply_nested_json_is_a_bad_message_not_a_crash(start_server):
    server = await start_server(("pitch",))
    nested = "[" * 5000 + "]" * 5000
    async with Monitor(server.ws_url) as monitor, Client(server.ws_url) as client:
        for _ in range(3):
            await client.ws.send_str(nested)
            error = await client.expect("error")
            assert error["code"] == "bad_message" and "nested too deeply" in error["message"]
        await client.send({"type": "ping", "t": 1})
        assert (await client.expect("pong"))["t"] == 1  # the connection is still served
        body = '{"type": "offer", "sdp": ' + nested + "}"
        async with aiohttp.ClientSession() as http, http.post(f"{server.http_url}/offer", data=body) as r:
            assert r.status == 400
            assert (await r.json())["code"] == "bad_offer"
        report = await monitor.finish()
    report.assert_unaffected()


async def test_absurd_static_paths_get_400_or_404_not_500(start_server):
    server = await start_server(("pitch",))
    async with Monitor(server.ws_url) as monitor, aiohttp.ClientSession() as http:
        for path, status in (("/web/" + "a" * 5000, 400), ("/web/" + "a" * 1000, 404), ("/web/" + "a/" * 400, 404)):
            async with http.get(server.http_url + path) as r:
                assert r.status == status, (len(path), r.status)
        async with http.get(f"{server.http_url}/web/app.js") as r:
            assert r.status == 200
        report = await monitor.finish()
    report.assert_unaffected()


async def _half_sent_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never finish
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await reader.read(1024) == b""
    except ConnectionError:
        return True


async def test_half_sent_requests_are_closed_after_the_header_timeout():
    config = make_server_config(models=("pitch",), http_idle_timeout_s=1.0)
    server, runner = await serve_app(config)
    connections = []
    try:
        async with Monitor(server.ws_url) as monitor:
            started = time.monotonic()
            connections = [await _half_sent_request(server.port) for _ in range(200)]
            for _, writer in connections[:50]:  # trickling more header bytes does not extend the deadline
                writer.write(b"a")
            closed = await asyncio.wait_for(
                asyncio.gather(*(_closed_by_server(reader) for reader, _ in connections)), timeout=5.0
            )
            elapsed_s = time.monotonic() - started
            assert all(closed)
            assert elapsed_s < 3.0, elapsed_s
            async with aiohttp.ClientSession() as http, http.get(f"{server.http_url}/healthz") as r:
                assert r.status == 200  # complete requests are served as before
            report = await monitor.finish()  # the monitor's WebSocket is a request in progress: kept
    finally:
        for _, writer in connections:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await runner.cleanup()
    report.assert_unaffected()



async def test_offers_that_never_connect_hold_no_session_slots_and_are_reaped_at_the_connect_timeout():
    """40 answered offers whose peer never answers ICE: no slot held, another client's start admitted.

    Each offer is answered (the server would admit its session now), but its session is admitted and
    opened only when ICE/DTLS connects, so the server's 4 slots stay free for the monitor and a second
    client. The default connect timeout (5 s) then drops every unconnected peer.
    """
    from streaming.client.webrtc import loopback_offer_sdp
    from streaming.engine.core import EngineConfig
    from streaming.server import ENGINE_KEY, RTC_KEY

    config = make_server_config(models=("pitch",), engine=EngineConfig(limits=AdmissionLimits(max_sessions=4)))
    server, runner = await serve_app(config)
    rtc, scheduler = server.app[RTC_KEY], server.app[ENGINE_KEY].scheduler
    try:
        async with Monitor(server.ws_url) as monitor, aiohttp.ClientSession() as http:
            sdp = await loopback_offer_sdp()  # the answer is never applied: ICE cannot complete

            async def offer() -> int:
                async with http.post(f"{server.http_url}/offer",
                                     json={"type": "offer", "sdp": sdp, "model": "pitch"}) as response:
                    return response.status

            first_answer = time.monotonic()
            statuses = []
            for _ in range(40):  # 40 a second: answering is loop work (SDP, ICE gathering) that a burst
                statuses.append(await offer())  # would charge to the monitor's chunks; slots are the point here
                await asyncio.sleep(0.025)
            last_answer = time.monotonic()
            assert statuses == [200] * 40
            assert len(rtc.peers) == 40 and len(scheduler.sessions) == 1  # only the monitor holds a slot
            async with Client(server.ws_url) as second:
                ready = await second.start("pitch", input_sample_rate_hz=16_000)
                assert ready["type"] == "ready"
            assert time.monotonic() - last_answer < 4.5 and rtc.peers  # not reaped before the timeout
            while rtc.peers and time.monotonic() - last_answer < 8.0:  # noqa: ASYNC110 (polls the server's set)
                await asyncio.sleep(0.05)
            reaped_after_s = time.monotonic() - first_answer
            assert not rtc.peers, f"{len(rtc.peers)} unconnected peers left 8 s after the last answer"
            assert reaped_after_s < last_answer - first_answer + 5.0 + 1.5
            report = await monitor.finish()
    finally:
        await runner.cleanup()
    metrics = server.engine.metrics.render().decode()
    assert "causalcast_sessions_refused_total{" not in metrics
    report.assert_unaffected()
    print(f"40 offers answered in {last_answer - first_answer:.2f} s, reaped {reaped_after_s:.2f} s after the first")


async def _closed_for_idling(client: Client, within_s: float) -> dict:
    """The `idle_timeout` error a client got, after which its socket closed (both within ``within_s``)."""
    error = None
    deadline = time.monotonic() + within_s
    try:
        while True:
            item = await client.receive(max(0.01, deadline - time.monotonic()))
            if isinstance(item, dict) and item.get("type") == "error":
                error = item
    except ConnectionError as e:
        assert "CLOSE" in str(e) and str(e).endswith(": idle"), e  # the server's close frame, reason "idle"
    assert time.monotonic() < deadline
    assert error is not None and error["code"] == "idle_timeout", error
    return error


async def test_a_websocket_without_a_session_is_closed_after_the_idle_timeout():
    """Connecting and never starting (or only pinging, or stopping and staying) closes with a clear error."""
    from streaming.transports.ws import WsConfig

    config = make_server_config(models=("pitch",), ws=WsConfig(idle_timeout_s=1.0))
    server, runner = await serve_app(config)
    try:
        async with Monitor(server.ws_url) as monitor:
            silent, pinger, refused, user = (Client(server.ws_url) for _ in range(4))
            for client in (silent, pinger, refused, user):
                await client.connect()
            await user.start("pitch", input_sample_rate_hz=16_000)
            started = time.monotonic()
            for i in range(5):  # pings are not use, and neither are starts that fail
                await pinger.send({"type": "ping", "t": i})
                await refused.send({"type": "start", "model": "no-such-model"})
                await asyncio.sleep(0.2)
            error = await _closed_for_idling(silent, within_s=2.0)
            assert "for 1 s" in error["message"] and "'start'" in error["message"]
            await _closed_for_idling(pinger, within_s=1.0)
            await _closed_for_idling(refused, within_s=1.0)
            await asyncio.sleep(max(0.0, started + 1.5 - time.monotonic()))
            await user.send({"type": "ping", "t": 1})  # a running session is use: kept past the timeout
            assert (await user.expect("pong"))["t"] == 1
            await user.stop()
            stopped = time.monotonic()
            await _closed_for_idling(user, within_s=2.5)  # idle again after `stop`
            assert time.monotonic() - stopped > 0.9
            report = await monitor.finish()
    finally:
        await runner.cleanup()
    metrics = server.engine.metrics.render().decode()
    assert 'causalcast_errors_total{code="idle_timeout"} 4.0' in metrics
    report.assert_unaffected()
