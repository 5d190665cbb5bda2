"""Helpers for end-to-end tests: paced audio senders and collectors over the real WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streaming.client import Client, MediaCollector
from streaming.protocol import MediaFrame


def tone(freq_hz: float, seconds: float, rate_hz: int = 16_000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def quantize(samples: np.ndarray) -> np.ndarray:
    """What the server sees after PCM16 transport."""
    return (np.clip(samples, -1, 1) * 32767).round().astype(np.int16).astype(np.float32) / 32768.0


def dominant_hz(samples: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate_hz / len(samples))


async def send_paced(client: Client, samples: np.ndarray, frame: int, rate_hz: int, speed: float = 1.0) -> None:
    """Send frames on a wall-clock schedule (start clock + sample count: no drift)."""
    start = time.monotonic()
    for i in range(0, len(samples), frame):
        await client.send_audio(samples[i : i + frame])
        due = start + (i + frame) / rate_hz / speed
        await asyncio.sleep(max(0.0, due - time.monotonic()))


@dataclass
class Received:
    collector: MediaCollector
    controls: list[dict[str, Any]] = field(default_factory=list)
    frames: list[MediaFrame] = field(default_factory=list)
    arrival_s: list[float] = field(default_factory=list)


async def collect_until(
    client: Client, received: Received, num_samples: int = 0, num_video: int = 0, timeout: float = 20.0
) -> Received:
    """Receive until the audio stream has ``num_samples`` and the video stream ``num_video`` frames."""
    deadline = time.monotonic() + timeout
    while (
        len(received.collector.audio_samples(0)) < num_samples or len(received.collector.video.get(1, [])) < num_video
    ):
        item = await client.receive(max(0.01, deadline - time.monotonic()))
        if isinstance(item, dict):
            received.controls.append(item)
            if item.get("type") == "error" and item.get("fatal"):
                raise AssertionError(f"server error: {item}")
        else:
            received.collector.add(item)
            received.frames.append(item)
            received.arrival_s.append(time.monotonic())
    return received


async def roundtrip(
    client: Client, samples: np.ndarray, rate_hz: int, frame: int, expect_samples: int, speed: float = 1.0
) -> Received:
    received = Received(MediaCollector(client.ready))
    sender = asyncio.create_task(send_paced(client, samples, frame, rate_hz, speed))
    try:
        await collect_until(client, received, num_samples=expect_samples, timeout=len(samples) / rate_hz / speed + 10)
    finally:
        await sender
    return received


async def stuck_client(port: int, first_message: dict[str, Any]) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that sends one control message and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await loop.sock_sendall(sock, request.encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += await loop.sock_recv(sock, 1)
    assert b" 101 " in reply.split(b"\r\n")[0]
    payload = json.dumps(first_message).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


class LoopLag:
    """Ticks every ``interval_s`` on the running loop; records how late each tick woke."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.lags_s: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.lags_s.append(time.perf_counter() - before - self.interval_s)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.lags_s, default=0.0)
