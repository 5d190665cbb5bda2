"""The control side of one client connection, the same on every transport.

A transport (the WebSocket connection, a WebRTC peer's data channel) hands each message a client sent to
one :class:`ControlEndpoint` and gives it a ``send(dict)`` coroutine for replies. The endpoint owns:

* **limits** (:class:`ControlLimits`): per-connection token buckets on messages and bytes (every message
  counts, control JSON and binary media alike) and on chosen message types (``ping``,
  ``request_keyframe``, ...), the control-message size, and the error-flood limit;
* **dispatch**: ``ping`` -> ``pong``, ``stop``, ``request_keyframe``, ``start``/``watch`` and the model's
  events, to the transport's :class:`ControlHandler`;
* **replies**: ``error`` (counted in metrics; a client causing more than ``max_errors_per_s`` errors a
  second is disconnected), ``stopped``, and ``stats`` every interval while a stream runs.

Adding a control message or a limit touches this file only.

Design of the limits: the connection's message and byte budgets are *waited for*: the transport reads
its next message only once the budget has refilled, so a flooding WebSocket client is slowed down by TCP
backpressure at no cost to the server and loses nothing (a data channel cannot push back: its peer's
bounded inbox drops what overflows, see :class:`~streaming.transports.webrtc_peer.RtcPeerBase`). A message
type's own budget *drops* what is over it (an extra ``ping`` or ``request_keyframe`` asks for nothing
new) and tells the client with at most one ``rate_limited`` error per type per second.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from models.errors import CausalcastError, ProtocolError
from streaming.metrics import Metrics
from streaming.protocol import parse_control

log = logging.getLogger(__name__)

MIB = 1024 * 1024

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ControlLimits:
    """What one client connection may send (both transports; ``causalcast serve --help``)."""

    max_messages_per_s: float = 200.0  # every message: control JSON and binary media frames (audio: 50/s)
    max_bytes_per_s: float = 1.0 * MIB  # every byte of every message (16 kHz PCM16 audio: 32 kB/s)
    burst_s: float = 2.0  # each budget holds this many seconds of its rate; one maximum-size message always fits
    # Per message type, messages a second; over it, messages are dropped (with a `rate_limited` error).
    max_type_per_s: Mapping[str, float] = field(default_factory=lambda: {"ping": 20.0, "request_keyframe": 4.0})
    max_errors_per_s: int = 50  # a client causing more errors than this in a second is disconnected


class TokenBucket:
    """A budget refilled at ``rate_per_s`` up to ``capacity``; taking more than is there is refused.

    A single take larger than the capacity succeeds from a full bucket and leaves a debt, so a message
    bigger than the burst is not refused forever, only spaced out. ``clock`` is injectable for tests.
    """

    def __init__(self, rate_per_s: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def delay(self, amount: float = 1.0) -> float:
        """Seconds until ``amount`` can be taken (0: now)."""
        if self.rate_per_s <= 0 or math.isinf(self.rate_per_s):
            return 0.0  # unlimited
        self._refill()
        needed = min(amount, self.capacity)
        return max(0.0, (needed - self._tokens) / self.rate_per_s)

    def take(self, amount: float = 1.0) -> bool:
        """Take ``amount`` if it is there now; returns whether it was taken."""
        if self.delay(amount) > 0.0:
            return False
        self._tokens -= amount
        return True


class ControlHandler(Protocol):
    """What a transport does with the messages the endpoint dispatched (raise ProtocolError to refuse)."""

    async def on_start(self, message: dict[str, Any]) -> None:
        """``start``: open a session."""

    async def on_watch(self, message: dict[str, Any]) -> None:
        """``watch``: watch a shared session."""

    async def on_stop(self) -> None:
        """``stop``: end the session or the watching."""

    def on_keyframe_request(self) -> None:
        """``request_keyframe``: the client's video decoder needs a key frame."""

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Any other type: a model event (``set_pitch``, ``text``, ``prompt``, ...)."""

    def on_media(self, data: bytes) -> None:
        """A binary message (on the WebSocket: a media frame, see :func:`~streaming.protocol.unpack_media`)."""


class ControlEndpoint:
    """Limits, dispatch and replies of one client connection (see the module docstring)."""

    def __init__(
        self,
        handler: ControlHandler,
        send: Send,
        limits: ControlLimits,
        metrics: Metrics,
        *,
        max_message_bytes: int,
        stats_interval_s: float = 1.0,
        transport: str = "ws",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self._send = send
        self.limits = limits
        self.metrics = metrics
        self.max_message_bytes = max_message_bytes
        self.stats_interval_s = stats_interval_s
        self.transport = transport
        self._clock = clock
        burst = max(1.0, limits.burst_s)
        self._messages = TokenBucket(limits.max_messages_per_s, limits.max_messages_per_s * burst, clock)
        self._bytes = TokenBucket(limits.max_bytes_per_s, max(limits.max_bytes_per_s * burst, max_message_bytes), clock)
        self._types = {kind: TokenBucket(rate, max(1.0, rate * burst), clock)
                       for kind, rate in limits.max_type_per_s.items()}
        self._dropped: dict[str, int] = {}  # per type: dropped since the last `rate_limited` notice
        self._last_notice: dict[str, float] = {}
        self._error_times: deque[float] = deque()
        self._stats_task: asyncio.Task[None] | None = None
        self.num_waits = 0  # times a message waited for the connection's budget

    # -- receiving ---------------------------------------------------------------------------------------
    async def receive(self, message: str | bytes) -> bool:
        """Handle one client message: wait for the budget, check, dispatch; errors become `error` replies.

        Returns False when the connection must close (the client keeps causing errors).
        """
        await self._wait_for_budget(len(message))
        try:
            if len(message) > self.max_message_bytes:
                raise ProtocolError(f"message of {len(message)} bytes is too large", "too_large")
            if isinstance(message, bytes):
                self.handler.on_media(message)
            else:
                await self._dispatch(parse_control(message))
        except CausalcastError as e:
            return await self.send_error(e)
        return True

    async def _wait_for_budget(self, num_bytes: int) -> None:
        waited = False
        while (delay := max(self._messages.delay(1.0), self._bytes.delay(num_bytes))) > 0.0:
            waited = True
            await asyncio.sleep(delay)
        self._messages.take(1.0)
        self._bytes.take(num_bytes)
        if waited:
            self.num_waits += 1
            self.metrics.rate_limited.labels(self.transport, "connection").inc()

    async def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        bucket = self._types.get(kind)
        if bucket is not None and not bucket.take(1.0):
            await self._drop(kind)
            return
        handler = self.handler
        if kind == "ping":
            await self._send({"type": "pong", "t": message.get("t"), "server_time": time.time()})
        elif kind == "stop":
            await handler.on_stop()
        elif kind == "request_keyframe":
            handler.on_keyframe_request()
        elif kind == "start":
            await handler.on_start(message)
        elif kind == "watch":
            await handler.on_watch(message)
        else:
            handler.on_event(kind, {k: v for k, v in message.items() if k != "type"})

    async def _drop(self, kind: str) -> None:
        rate = self.limits.max_type_per_s[kind]
        await self.report_dropped(kind, 1, f"more than {rate:g} '{kind}' messages a second")

    async def report_dropped(self, kind: str, num: int, why: str) -> None:
        """Messages were dropped over a limit: counted, and told at most once a second per ``kind``."""
        self.metrics.rate_limited.labels(self.transport, kind).inc(num)
        self._dropped[kind] = self._dropped.get(kind, 0) + num
        now = self._clock()
        if now - self._last_notice.get(kind, -math.inf) < 1.0:
            return
        self._last_notice[kind] = now
        num, self._dropped[kind] = self._dropped[kind], 0
        error = ProtocolError(f"{why}; {num} dropped (this notice comes at most once a second)", "rate_limited")
        self.metrics.errors.labels(error.code).inc()
        await self._send(error.to_message())

    # -- replies -----------------------------------------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        """Send a control message to the client."""
        await self._send(message)

    async def send_error(self, error: CausalcastError) -> bool:
        """Report an error; returns False when the client is flooding errors and must be disconnected."""
        self.metrics.errors.labels(error.code).inc()
        now = self._clock()
        self._error_times.append(now)
        while self._error_times and self._error_times[0] < now - 1.0:
            self._error_times.popleft()
        await self._send(error.to_message())
        return len(self._error_times) <= self.limits.max_errors_per_s

    async def send_stopped(self, session_id: str, reason: str, **fields: Any) -> None:
        """Tell the client its session (or its watching) ended, and why."""
        await self._send({"type": "stopped", "session": session_id, "reason": reason, **fields})

    # -- stats -------------------------------------------------------------------------------------------
    def start_stats(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        """Send ``{"type": "stats", **snapshot()}`` every interval until it returns None or :meth:`stop_stats`."""
        self.stop_stats()
        self._stats_task = asyncio.create_task(self._report_stats(snapshot), name=f"stats-{self.transport}")

    def stop_stats(self) -> None:
        """Stop the stats reports (idempotent)."""
        if self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None

    async def _report_stats(self, snapshot: Callable[[], dict[str, Any] | None]) -> None:
        while True:
            await asyncio.sleep(self.stats_interval_s)
            fields = snapshot()
            if fields is None:
                return
            try:
                await self._send({"type": "stats", **fields})
            except (ConnectionError, RuntimeError):  # the client is gone; the transport's close path cleans up
                return
