"""A well-behaved session that streams beside unfriendly probes and reports whether they hurt it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from streaming.client import Client

from streaming_helpers import tone

RATE_HZ = 16_000
FRAME = 320  # 20 ms


@dataclass
class MonitorReport:
    """What the monitor saw: the server's own count of its late chunks, and ping round trips."""

    stats: dict[str, Any]
    round_trips_s: list[float] = field(default_factory=list)
    samples_in: int = 0
    samples_out: int = 0

    @property
    def late_chunks(self) -> int:
        return int(self.stats["late_chunks"])

    @property
    def worst_round_trip_s(self) -> float:
        return max(self.round_trips_s)

    def assert_unaffected(self, max_late: int = 2, max_round_trip_s: float = 0.5) -> None:
        """Its chunks on time and its pings answered promptly (bounds generous for a shared 2-core box)."""
        assert self.round_trips_s, "the monitor got no pong"
        assert self.late_chunks <= max_late, self
        assert self.worst_round_trip_s < max_round_trip_s, self
        # what went in came out (less what was still in flight when it stopped)
        assert self.samples_out >= self.samples_in - 10 * FRAME, self


class Monitor:
    """A pitch session over the WebSocket sending 20 ms of audio every 20 ms and a ping every 100 ms."""

    def __init__(self, ws_url: str, model: str = "pitch") -> None:
        self.client = Client(ws_url)
        self.model = model
        self.round_trips_s: list[float] = []
        self.samples_in = 0
        self.samples_out = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Monitor:
        await self.client.connect()
        await self.client.start(self.model, input_sample_rate_hz=RATE_HZ, audio="pcm16")
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._receive())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._halt()
        await self.client.close()

    async def _halt(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _send(self) -> None:
        audio = tone(300, 1.0)
        start = time.monotonic()
        i = 0
        while True:
            offset = (i * FRAME) % len(audio)
            await self.client.send_audio(audio[offset : offset + FRAME])
            self.samples_in += FRAME
            if i % 5 == 0:
                await self.client.send({"type": "ping", "t": time.monotonic()})
            i += 1
            await asyncio.sleep(max(0.0, start + i * FRAME / RATE_HZ - time.monotonic()))

    async def _receive(self) -> None:
        while True:
            item = await self.client.receive(None)
            if isinstance(item, dict):
                if item.get("type") == "pong":
                    self.round_trips_s.append(time.monotonic() - float(item["t"]))
                elif item.get("type") == "error":
                    raise AssertionError(f"the monitor got an error: {item}")
            else:
                self.samples_out += len(item.payload) // 2

    async def finish(self) -> MonitorReport:
        """Stop sending, give the last chunks a moment, stop the session; what it saw."""
        self._tasks[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tasks[0]
        await asyncio.sleep(0.2)
        await self._halt()
        stopped = await self.client.stop()
        return MonitorReport(stopped["stats"], self.round_trips_s, self.samples_in, self.samples_out)

