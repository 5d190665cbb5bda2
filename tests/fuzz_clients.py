"""The fuzzing clients of tests/test_fuzz.py, run as a process of their own beside the server under test.

Seeded random input for everything a client can send: WebSocket frames, control JSON, SDP offers, data-channel
messages. Each phase asserts what a client must get back (a reply, a clear error or a quiet close; an HTTP
200, 400 or 503 for an offer, never a 500; a pong after the fuzz). Run:

    python tests/fuzz_clients.py WS_URL HTTP_URL SEED

It prints one JSON line (what came back) and exits 0, or fails with the assertion that broke.

Why a process of its own: real clients do not share the server's event loop. In one process the clients'
work (aiortc peers, JSON mutation, SDP parsing) queued ahead of the server's callbacks and made the monitor
session's chunks late on a 2-core machine; what the test measures is whether hostile *clients* hurt the
server's other sessions, which needs them on the other side of a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import sys
from typing import Any

import aiohttp
import numpy as np

from streaming.client import Client
from streaming.client.webrtc import ArrayAudioTrack, RtcClient, loopback_offer_sdp
from streaming.protocol import HEADER, PROTOCOL_VERSION

TEMPLATES: list[dict[str, Any]] = [
    {"type": "start", "protocol": PROTOCOL_VERSION, "model": "pitch", "params": {"semitones": 3},
     "input": {"sample_rate_hz": 16000, "codec": "pcm16"}, "output": {"audio": "pcm16", "video": "jpeg"}},
    {"type": "start", "model": "testcard", "share": True, "output": {"video": "jpeg"}},
    {"type": "watch", "session": "abc", "output": {"audio": "opus"}},
    {"type": "stop"},
    {"type": "ping", "t": 1.5},
    {"type": "request_keyframe"},
    {"type": "set_pitch", "semitones": 2},
    {"type": "prompt", "text": "a red square"},
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**30, rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.5, 1e308, float(rng.random()), 1e-300])
    if kind == 4:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(0, 40)))
    if kind == 5:
        return rng.choice(["", "pitch", "testcard", "start", "opus", "vp8", "h264", "jpeg", "pcm16", "../../etc"])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    if kind == 7:
        return {random_value(rng, 5) if rng.random() < 0.3 else rng.choice(["type", "model", "params", "output"]):
                random_value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    return "[" * rng.randrange(1, 3000)  # nested-looking text


def mutate_message(rng: random.Random) -> str:
    message = json.loads(json.dumps(rng.choice(TEMPLATES)))
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        keys = list(message)
        if op == 0 and keys:
            message[rng.choice(keys)] = random_value(rng)
        elif op == 1 and keys:
            del message[rng.choice(keys)]
        elif op == 2:
            message[rng.choice(["params", "output", "input", "extra", "session"])] = random_value(rng)
        else:
            sub = message.get("params")
            if isinstance(sub, dict):
                sub[rng.choice(["semitones", "seed", "voice", "x"])] = random_value(rng)
    text = json.dumps(message)
    if rng.random() < 0.15:  # broken JSON
        cut = rng.randrange(len(text))
        text = text[:cut] + rng.choice(["", "}", "\x00", "\ud800".encode("utf-8", "surrogatepass").decode("latin-1")])
    if rng.random() < 0.05:
        text = "[" * 2000 + text + "]" * 2000
    return text


def random_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 40))
    payload = rng.randbytes(rng.choice([0, 1, 3, 640, 641, 4096]))
    header = HEADER.pack(rng.choice([1, 2, 0, 255]), rng.choice([1, 2, 3, 0, 9]), rng.randrange(256),
                         rng.randrange(256), rng.randrange(2**32), rng.choice([0, 2**63, rng.randrange(2**40)]))
    if kind == 1:
        return header + payload
    return HEADER.pack(1, 1, 0, 0, rng.randrange(2**32), rng.randrange(2**34)) + payload  # audio, odd pts


def mutate_sdp(rng: random.Random, sdp: str) -> str:
    lines = sdp.split("\r\n")
    for _ in range(rng.randrange(1, 6)):
        op = rng.randrange(6)
        i = rng.randrange(len(lines))
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            line = lines[i]
            if line:
                j = rng.randrange(len(line))
                lines[i] = line[:j] + chr(rng.randrange(32, 127)) + line[j + 1 :]
        elif op == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif op == 4:
            lines.insert(i, rng.choice(["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=fingerprint:sha-256 00:11",
                                        "a=setup:actpass", "a=candidate:1 1 udp 1 127.0.0.1 1 typ host",
                                        "a=rtpmap:111 opus/0/2", "a=ice-ufrag:", "m=video 0 RTP/AVP 0"]))
        else:
            lines[i] = lines[i] * rng.randrange(2, 50)
    return "\r\n".join(lines)


class ErrorLog(logging.Handler):
    """Every ERROR record with a traceback, from any logger: an exception nobody handled."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage() or "never retrieved" in record.getMessage():
            self.records.append(record)


async def fuzz_websocket(rng: random.Random, ws_url: str) -> tuple[int, int]:
    """Control JSON and binary frames, paced under the 50 errors/s disconnect limit; (replies, closes)."""
    replies = closes = 0
    client = Client(ws_url)
    await client.connect()
    for i in range(240):
        try:
            if rng.random() < 0.6:
                await client.ws.send_str(mutate_message(rng))
            else:
                await client.ws.send_bytes(random_frame(rng))
            with contextlib.suppress(asyncio.TimeoutError):
                while True:  # drain what came back so far
                    await client.receive(0.005)
                    replies += 1
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            closes += 1  # a quiet close (1008 for error floods, 1009 for size): reconnect
            await client.close()
            client = Client(ws_url)
            await client.connect()
        if i % 8 == 7:
            await asyncio.sleep(0.03)
    await client.send({"type": "ping", "t": 7})
    assert (await client.expect("pong"))["t"] == 7
    await client.close()
    return replies, closes


async def fuzz_offers(rng: random.Random, http_url: str) -> dict[int, int]:
    """Mutated real SDP offers; each answered 200, 400 or 503, never 500. The statuses counted."""
    statuses: dict[int, int] = {}
    sdp = await loopback_offer_sdp()
    async with aiohttp.ClientSession() as http:
        for _ in range(40):
            body = {"type": "offer", "sdp": mutate_sdp(rng, sdp), "model": rng.choice(["pitch", "testcard"])}
            if rng.random() < 0.2:
                body[rng.choice(["params", "share", "watch", "model"])] = random_value(rng)
            async with http.post(f"{http_url}/offer", json=body) as r:
                statuses[r.status] = statuses.get(r.status, 0) + 1
                assert r.status in (200, 400, 503), (r.status, await r.text())
    return statuses


async def fuzz_data_channel(rng: random.Random, http_url: str) -> int:
    """A connected peer gets random text and bytes, then still answers a ping; the quiet closes counted."""
    closes = 0
    tone = (0.3 * np.sin(np.arange(48_000 * 4) * 2 * np.pi * 300 / 48_000)).astype(np.float32)

    async def open_peer() -> RtcClient:
        peer = RtcClient(http_url)
        await peer.connect("pitch", audio=ArrayAudioTrack(tone), receive_audio=True)
        await peer.wait_connected()
        await peer.expect("ready")
        return peer

    peer = await open_peer()
    for i in range(100):  # paced under the 50 errors/s disconnect limit
        if peer.channel.readyState != "open":  # a fuzzed 'stop' ended it: a quiet close
            closes += 1
            await peer.close()
            peer = await open_peer()
        roll = rng.random()
        if roll < 0.6:
            peer.channel.send(mutate_message(rng))
        elif roll < 0.8:
            peer.channel.send(rng.randbytes(rng.randrange(1, 200)))
        else:
            peer.channel.send(struct.pack("!I", i) * rng.randrange(1, 64))
        await asyncio.sleep(0.03)
    if peer.channel.readyState != "open":
        await peer.close()
        peer = await open_peer()
    peer.send({"type": "ping", "t": 9})
    while True:  # the errors the fuzz earned come first
        message = await asyncio.wait_for(peer.messages.get(), 10)
        if message.get("type") == "pong" and message.get("t") == 9:
            break
        assert message.get("type") in ("error", "pong", "stats", "pitch", "stopped"), message
    await peer.close()
    return closes


async def fuzz(ws_url: str, http_url: str, seed: int) -> dict[str, Any]:
    """All three phases in order, from one seeded generator; what came back."""
    rng = random.Random(seed)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    replies, closes = await fuzz_websocket(rng, ws_url)
    statuses = await fuzz_offers(rng, http_url)
    await asyncio.sleep(2.5)  # offers that were answered but never connect time out (2 s on the test's server)
    closes += await fuzz_data_channel(rng, http_url)
    return {"replies": replies, "closes": closes, "offer_statuses": statuses,
            "client_errors": [f"{r.name}: {r.getMessage()}" for r in errors.records[:5]]}


if __name__ == "__main__":
    ws, http_url, seed_arg = sys.argv[1:4]
    print(json.dumps(asyncio.run(fuzz(ws, http_url, int(seed_arg)))), flush=True)
