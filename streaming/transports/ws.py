"""WebSocket transport: the causalcast protocol (docs/protocol.md) over one aiohttp WebSocket.

Data flows one way per direction. Receiving: text frames are control messages, binary frames are media
for the session's input buffer; nothing here waits on a model. Sending: one task per session drains its
outbox (control first, then media), encodes media (video encoding on the codec thread pool, never on the
loop) and writes frames; TCP backpressure from a slow reader stalls only that task, and the bounded outbox
drops that session's oldest media instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from models.errors import CausalcastError, ProtocolError, ShutdownError
from streaming.broadcast import Broadcast, BroadcastHub, Viewer
from streaming.engine.core import Engine
from streaming.media.wire import WireEncoder
from streaming.protocol import (
    AudioCodec,
    MediaKind,
    VideoCodec,
    parse_control,
    parse_output,
    parse_start,
    session_reply,
    unpack_media,
)
from streaming.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WsConfig:
    """Limits of the WebSocket transport."""

    max_message_bytes: int = 2 * 1024 * 1024
    stats_interval_s: float = 1.0
    max_errors_per_s: int = 50  # a client producing more errors than this is disconnected
    drain_timeout_s: float = 2.0  # how long a stopping session may take to flush its output
    # Kernel send buffer per socket. Real-time media should be dropped, not queued for seconds in the
    # kernel: a small buffer makes a slow client's backlog reach our bounded queues, which drop oldest.
    socket_send_buffer_bytes: int | None = 256 * 1024


class SessionSender:
    """Drains one session's outbox to the socket: control as text, media encoded into binary frames."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        session: Session,
        audio_codec: AudioCodec,
        video_codec: VideoCodec,
        codec_pool: Executor,
    ) -> None:
        self.ws = ws
        self.session = session
        self.codec_pool = codec_pool
        self.encoder = WireEncoder(session.spec, audio_codec, video_codec)

    async def run(self) -> None:
        """Send until the session's outbox is closed and drained."""
        while (item := await self.session.outbox.get()) is not None:
            if isinstance(item, dict):
                await self.ws.send_str(json.dumps(item))
                continue
            for frame in await self.encoder.encode(item, self.codec_pool):
                await self.ws.send_bytes(frame.data)


class WsConnection:
    """One client WebSocket: at most one session at a time (``start`` again after ``stop``)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        engine: Engine,
        config: WsConfig,
        codec_pool: Executor,
        broadcasts: BroadcastHub,
    ) -> None:
        self.ws = ws
        self.engine = engine
        self.broadcasts = broadcasts
        self._watching: tuple[Broadcast, Viewer] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.config = config
        self.codec_pool = codec_pool
        self.session: Session | None = None
        self._sender: SessionSender | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._error_times: deque[float] = deque()

    async def run(self) -> None:
        """Serve the connection until the client or the server closes it."""
        try:
            async for msg in self.ws:
                try:
                    if msg.type is WSMsgType.TEXT:
                        await self._on_text(msg.data)
                    elif msg.type is WSMsgType.BINARY:
                        self._on_binary(msg.data)
                    elif msg.type is WSMsgType.ERROR:
                        await self._on_socket_error(msg.data)
                        break
                except CausalcastError as e:
                    if not await self._send_error(e):
                        break
        finally:
            await self.end_watching("client disconnected", notify=False)
            await self.end_session("client disconnected", notify=False)

    async def shutdown(self) -> None:
        """Server shutdown: tell the client, close its session and the socket."""
        await self._send_error(ShutdownError("server shutting down"))
        await self.end_watching("server shutting down", notify=False)
        await self.end_session("server shutting down", notify=False)
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    # -- receiving -----------------------------------------------------------------------------------
    async def _on_text(self, text: str) -> None:
        message = parse_control(text)
        kind = message["type"]
        if kind == "start":
            await self._start(message)
        elif kind == "watch":
            await self._watch(message)
        elif kind == "stop":
            if self._watching is not None:
                await self.end_watching("stopped by client", notify=True)
                return
            if self.session is None:
                raise ProtocolError("'stop' without a running session", "not_started")
            await self.end_session("stopped by client", notify=True)
        elif kind == "ping":
            await self.ws.send_str(json.dumps({"type": "pong", "t": message.get("t"), "server_time": time.time()}))
        elif kind == "request_keyframe":
            if self._sender is not None:
                self._sender.encoder.request_keyframe()
        else:
            session = self._require_session(kind)
            payload = {k: v for k, v in message.items() if k != "type"}
            session.push_event(kind, payload)

    def _on_binary(self, data: bytes) -> None:
        frame = unpack_media(data)
        session = self._require_session("binary media")
        if frame.kind is not MediaKind.AUDIO or frame.codec != AudioCodec.PCM16:
            raise ProtocolError("only PCM16 audio frames are accepted from clients", "bad_frame")
        session.push_audio(frame.payload, frame.pts)

    async def _on_socket_error(self, error: BaseException) -> None:
        # aiohttp has already closed the socket, with 1009 (message too big) for an oversized frame:
        # a standard, clean close; there is no way left to send an `error` message first.
        self.engine.metrics.errors.labels("too_large" if "size" in str(error).lower() else "socket").inc()
        log.info("websocket closed on error: %s", error)

    def _require_session(self, what: str) -> Session:
        if self.session is None:
            raise ProtocolError(f"{what} before 'start'", "not_started")
        if not self.session.running:
            raise ProtocolError(
                f"{what} after the session ended ({self.session.close_reason}); send 'start' for a new one",
                "not_started",
            )
        return self.session

    # -- session lifecycle ---------------------------------------------------------------------------
    def _require_idle(self) -> None:
        if self.session is not None and self.session.running:
            raise ProtocolError("a session is already running on this connection; 'stop' it first")
        if self._watching is not None:
            raise ProtocolError("this connection is watching a stream; 'stop' it first")

    async def _start(self, message: dict[str, Any]) -> None:
        self._require_idle()
        if self.session is not None:  # ended by the server (fatal error): its sender has drained
            await self.end_session(self.session.close_reason or "ended", notify=False)
        request = parse_start(message)
        session = self.engine.new_session(request.model, request.params, request.input_sample_rate_hz)
        sender = SessionSender(self.ws, session, request.audio_codec, request.video_codec, self.codec_pool)
        await self.engine.open_session(session)
        self.session, self._sender = session, sender
        if request.share:
            self.broadcasts.share(session)
        ready = session_reply("ready", session.id, session.model, sender.encoder.streams(), session.spec.describe(),
                              params=session.params)
        await self.ws.send_str(json.dumps(ready))
        self._tasks = [
            asyncio.create_task(self._send(sender), name=f"send-{session.id}"),
            asyncio.create_task(self._report_stats(session), name=f"stats-{session.id}"),
        ]

    async def end_session(self, reason: str, *, notify: bool) -> None:
        """Close the current session, flush what it produced (if the client is there), clean up."""
        session, self.session, self._sender = self.session, None, None
        if session is None:
            return
        await self.engine.close_session(session, reason)
        self.broadcasts.unshare(session)
        send_task, stats_task = self._tasks
        stats_task.cancel()
        if not notify:
            send_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(send_task, self.config.drain_timeout_s)
        with contextlib.suppress(asyncio.CancelledError):
            await stats_task
        self._tasks = []
        if notify:
            await self._send_json(
                {"type": "stopped", "session": session.id, "reason": reason, "stats": session.stats.snapshot()}
            )

    # -- watching a shared session ------------------------------------------------------------------
    async def _watch(self, message: dict[str, Any]) -> None:
        self._require_idle()
        session_id = message.get("session")
        if not isinstance(session_id, str):
            raise ProtocolError("'watch' needs the string 'session' id of a shared session")
        audio_codec, video_codec = parse_output(message)
        broadcast, viewer = self.broadcasts.watch(session_id, audio_codec, video_codec)
        self._watching = (broadcast, viewer)
        session = broadcast.session
        watching = session_reply("watching", session.id, session.model, broadcast.streams(viewer),
                                 session.spec.describe())
        await self.ws.send_str(json.dumps(watching))
        self._watch_task = asyncio.create_task(self._send_viewer(viewer), name=f"watch-{session.id}")

    async def _send_viewer(self, viewer: Viewer) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while (item := await viewer.get()) is not None:
                if isinstance(item, dict):
                    await self.ws.send_str(json.dumps(item))
                else:
                    await self.ws.send_bytes(item)

    async def end_watching(self, reason: str, *, notify: bool) -> None:
        """Stop watching (client `stop`, disconnect, shutdown); safe to call when not watching."""
        watching, self._watching = self._watching, None
        if watching is None:
            return
        broadcast, viewer = watching
        broadcast.remove_viewer(viewer)
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if notify:
            await self._send_json({"type": "stopped", "session": broadcast.session.id, "reason": reason,
                                   "dropped_frames": viewer.num_dropped})

    async def _send(self, sender: SessionSender) -> None:
        try:
            await sender.run()
        except (ConnectionError, RuntimeError) as e:  # the client went away mid-send
            log.debug("sender of %s stopped: %s", sender.session.id, e)

    async def _report_stats(self, session: Session) -> None:
        while session.running:
            await asyncio.sleep(self.config.stats_interval_s)
            if session.running:
                session.outbox.put_control(
                    {"type": "stats", "session": session.id, **session.stats.snapshot(), **_input_stats(session)}
                )

    # -- errors --------------------------------------------------------------------------------------
    async def _send_error(self, error: CausalcastError) -> bool:
        """Report an error; returns False when the client is flooding errors and was disconnected."""
        self.engine.metrics.errors.labels(error.code).inc()
        now = time.monotonic()
        self._error_times.append(now)
        while self._error_times and self._error_times[0] < now - 1.0:
            self._error_times.popleft()
        await self._send_json(error.to_message())
        if len(self._error_times) > self.config.max_errors_per_s:
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many errors")
            return False
        return True

    async def _send_json(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(message))


def _input_stats(session: Session) -> dict[str, Any]:
    if session.input is None:
        return {}
    rate = session.input.model_rate_hz
    return {
        "input_dropped_ms": round(session.input.fifo.num_dropped * 1000 / rate, 1),
        "input_gap_ms": round(session.input.num_gap_samples * 1000 / session.input.client_rate_hz, 1),
        "input_resyncs": session.input.num_resyncs,
    }
