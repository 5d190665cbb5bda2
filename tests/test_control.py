"""The control layer both transports share: budgets on what a client sends, dispatch, replies.

The unit tests drive the token buckets and the endpoint on an injected clock; the server tests flood the
real server from another process while a well-behaved session streams beside it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hardening_helpers import Monitor

from models.errors import ProtocolError
from streaming.client import Client
from streaming.metrics import Metrics
from streaming.transports.control import ControlEndpoint, ControlLimits, TokenBucket

FLOOD_CLIENT = Path(__file__).with_name("flood_client.py")
RATE = 16_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_and_spaces_out_oversized_takes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, 20.0, clock)
    assert all(bucket.take() for _ in range(20))  # the burst
    assert not bucket.take()
    assert bucket.delay() == pytest.approx(0.1)
    clock.now += 0.25
    assert bucket.take() and bucket.take() and not bucket.take()  # 2.5 tokens came back
    clock.now += 10.0
    assert bucket.delay(50.0) == 0.0 and bucket.take(50.0)  # bigger than the capacity: taken when full...
    assert bucket.delay(1.0) == pytest.approx(3.1)  # ...and paid back as a debt (30 + 1 tokens at 10/s)
    assert TokenBucket(float("inf"), 1.0, clock).delay(1e9) == 0.0  # unlimited


class Recorder:
    """A control handler that records what the endpoint dispatched to it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def on_start(self, message: dict[str, Any]) -> None:
        self.calls.append(("start", message["model"]))

    async def on_watch(self, message: dict[str, Any]) -> None:
        raise ProtocolError("no watching here")

    async def on_stop(self) -> None:
        self.calls.append(("stop", None))

    def on_keyframe_request(self) -> None:
        self.calls.append(("keyframe", None))

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        self.calls.append((kind, payload))

    def on_media(self, data: bytes) -> None:
        self.calls.append(("media", len(data)))


def _endpoint(limits: ControlLimits, clock: FakeClock) -> tuple[ControlEndpoint, Recorder, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    recorder = Recorder()
    endpoint = ControlEndpoint(recorder, send, limits, Metrics(), max_message_bytes=16_384, clock=clock)
    return endpoint, recorder, sent


async def test_endpoint_dispatches_every_kind_and_refuses_bad_messages() -> None:
    endpoint, recorder, sent = _endpoint(ControlLimits(), FakeClock())
    for message in ('{"type": "start", "model": "pitch"}', '{"type": "set_pitch", "semitones": 3}',
                    '{"type": "request_keyframe"}', '{"type": "stop"}'):
        assert await endpoint.receive(message)
    assert await endpoint.receive(b"\x01" * 20)
    assert recorder.calls == [("start", "pitch"), ("set_pitch", {"semitones": 3}), ("keyframe", None),
                              ("stop", None), ("media", 20)]
    await endpoint.receive('{"type": "ping", "t": 7}')
    assert sent[-1]["type"] == "pong" and sent[-1]["t"] == 7
    for bad, code in (("not json", "bad_message"), ("[" * 5000 + "]" * 5000, "bad_message"),
                      ('{"type": "watch"}', "bad_message"), ("x" * 20_000, "too_large")):
        await endpoint.receive(bad)
        assert sent[-1]["type"] == "error" and sent[-1]["code"] == code, (bad[:20], sent[-1])
    assert "nested too deeply" in sent[-3]["message"]


async def test_endpoint_drops_what_is_over_a_type_budget_and_says_so_once_a_second() -> None:
    clock = FakeClock()
    limits = ControlLimits(max_type_per_s={"ping": 2.0, "request_keyframe": 1.0}, burst_s=1.0)
    endpoint, recorder, sent = _endpoint(limits, clock)
    for _ in range(10):
        await endpoint.receive('{"type": "ping"}')
        await endpoint.receive('{"type": "request_keyframe"}')
    assert sum(m["type"] == "pong" for m in sent) == 2  # the burst of the ping budget
    assert recorder.calls.count(("keyframe", None)) == 1
    notices = [m for m in sent if m.get("code") == "rate_limited"]
    assert len(notices) == 2 and not any(n["fatal"] for n in notices)
    assert {n["message"].split("'")[1] for n in notices} == {"ping", "request_keyframe"}
    clock.now += 1.0  # a second later: budgets refilled; the next notice counts every drop since the last
    for _ in range(5):
        await endpoint.receive('{"type": "ping"}')
    assert sum(m["type"] == "pong" for m in sent) == 4
    assert "; 8 dropped" in [m for m in sent if m.get("code") == "rate_limited"][-1]["message"]  # 7 + 1


async def test_endpoint_errors_beyond_the_flood_limit_close_the_connection() -> None:
    endpoint, _, _ = _endpoint(ControlLimits(max_errors_per_s=5), FakeClock())
    results = [await endpoint.receive("not json") for _ in range(7)]
    assert results == [True] * 5 + [False] * 2


async def test_connection_budget_makes_a_fast_sender_wait() -> None:
    """Over the connection's message budget, receive() waits (the WebSocket reads more slowly)."""
    limits = ControlLimits(max_messages_per_s=50.0, burst_s=1.0, max_type_per_s={})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    endpoint = ControlEndpoint(Recorder(), send, limits, Metrics(), max_message_bytes=1024)
    start = time.monotonic()
    for _ in range(75):  # 50 in the burst, 25 more at 50/s
        await endpoint.receive('{"type": "ping"}')
    elapsed = time.monotonic() - start
    assert len(sent) == 75  # nothing lost
    assert 0.4 <= elapsed < 2.0 and endpoint.num_waits > 0


# -- against the real server --------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["ping", "keyframe", "big"])
async def test_a_flooding_client_is_limited_and_others_stream_on(start_server, mode: str) -> None:
    """Pings, key frame requests or 2 MiB messages as fast as a socket takes them, from another process: the
    flooder is held to its budgets (not disconnected), and a pitch session beside it (hardening_helpers'
    Monitor) gets its audio back, its chunks on time and its pings answered promptly."""
    server = await start_server(("pitch", "testcard"))
    seconds = 3.0
    async with Monitor(server.ws_url) as monitor:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(FLOOD_CLIENT), server.ws_url, str(seconds), mode, stdout=subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        report = await monitor.finish()
    flood = json.loads(out)
    limits = ControlLimits()
    if mode == "ping":
        # pongs: at most the ping budget (its burst, then its rate), however many were sent
        assert flood["pongs"] <= limits.max_type_per_s["ping"] * (seconds + 1 + limits.burst_s)
        assert flood["sent"] > 2 * flood["pongs"] and flood["rate_limited"] >= 1
    elif mode == "keyframe":
        assert flood["key_frames"] <= limits.max_type_per_s["request_keyframe"] * (seconds + 1 + limits.burst_s) + 2
        assert flood["rate_limited"] >= 1
    else:  # 2 MiB each: the byte budget lets about one through per 2 s
        assert flood["errors"] <= 1 + (seconds + 1) * limits.max_bytes_per_s / (2 * 1024 * 1024) + 1
    assert not flood["closed"]  # limited, not disconnected
    waits = server.engine.metrics.registry.get_sample_value(
        "causalcast_rate_limited_total", {"transport": "ws", "kind": "connection"}
    )
    assert (waits or 0) > 0 or flood["rate_limited"]
    # A starved loop (the unlimited floods of issue 18: round trips of 1-2 s, input lost) makes most chunks
    # late; a 2-core machine shared with other work makes some late with no flood at all (measured: up to
    # 17 of 125 while two other processes kept both cores busy), hence a tenth of the chunks.
    report.assert_unaffected(max_late=max(2, report.stats["chunks_out"] // 10), max_round_trip_s=0.25)


async def test_a_data_channel_flood_is_limited_and_the_peer_stays_up(server) -> None:
    """A thousand pings on a WebRTC data channel at once: answered within the ping budget, the rest dropped
    (told with `rate_limited`), nothing raised into aiortc, and the peer still obeys `stop`."""
    from streaming.client.webrtc import RtcClient

    client = RtcClient(server.http_url)
    try:
        await client.connect("testcard", receive_video=True)
        await client.wait_connected(10)
        await client.expect("ready")
        started = time.monotonic()
        for _ in range(1000):  # four times the peer's inbox
            client.send({"type": "ping"})
        await asyncio.sleep(2.0)
        client.send({"type": "stop"})
        messages = []
        while not messages or messages[-1]["type"] != "stopped":
            messages.append(await asyncio.wait_for(client.messages.get(), 10))
        elapsed = time.monotonic() - started  # SCTP may take seconds to deliver them on a busy machine
        pongs = sum(m["type"] == "pong" for m in messages)
        limits = ControlLimits()
        assert 1 <= pongs <= limits.max_type_per_s["ping"] * (elapsed + limits.burst_s)
        notices = [m for m in messages if m.get("code") == "rate_limited"]
        assert notices and not any(m["type"] == "error" and m.get("code") != "rate_limited" for m in messages)
        assert messages[-1]["reason"] == "stopped by client"
    finally:
        await client.close()


async def test_clients_leaving_before_ready_leave_no_traceback_and_no_session(start_server, caplog) -> None:
    """Start, then vanish before `ready` (100 times): every session is released and nothing logs an error."""
    server = await start_server(("pitch",))
    caplog.set_level(logging.WARNING)
    for i in range(100):
        client = Client(server.ws_url)
        await client.connect()
        await client.send({"type": "start", "model": "pitch", "input": {"sample_rate_hz": RATE}})
        if i % 2:
            await asyncio.sleep(0)  # some leave at once, some a moment later
        await client.abort()
    for _ in range(100):
        if not server.engine.scheduler.sessions and server.engine.runner.num_states == 0:
            break
        await asyncio.sleep(0.05)
    assert server.engine.scheduler.sessions == {} and server.engine.runner.num_states == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors[:3]]
