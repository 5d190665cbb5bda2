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

from streaming.engine.core import Engine
from streaming.errors import CausalcastError, ProtocolError, ShutdownError
from streaming.media.codecs import AudioEncoder, VideoEncoder
from streaming.protocol import (
    PROTOCOL_VERSION,
    AudioCodec,
    MediaKind,
    VideoCodec,
    pack_media,
    parse_control,
    parse_start,
    unpack_media,
)
from streaming.session import OutputChunk, Session

log = logging.getLogger(__name__)

AUDIO_STREAM = 0
VIDEO_STREAM = 1


@dataclass(frozen=True)
class WsConfig:
    """Limits of the WebSocket transport."""

    max_message_bytes: int = 2 * 1024 * 1024
    stats_interval_s: float = 1.0
    max_errors_per_s: int = 50  # a client producing more errors than this is disconnected
    drain_timeout_s: float = 2.0  # how long a stopping session may take to flush its output


class SessionSender:
    """Encodes one session's output and writes it to the socket, in outbox order."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        session: Session,
        audio_codec: AudioCodec,
        video_codec: VideoCodec,
        codec_pool: Executor,
    ) -> None:
        spec = session.spec
        self.ws = ws
        self.session = session
        self.codec_pool = codec_pool
        self.audio = AudioEncoder(audio_codec, spec.output_audio.sample_rate_hz) if spec.output_audio else None
        self.video = (
            VideoEncoder(video_codec, spec.output_video.width, spec.output_video.height, spec.output_video.fps)
            if spec.output_video
            else None
        )
        self._seq = {AUDIO_STREAM: 0, VIDEO_STREAM: 0}

    def streams(self) -> list[dict[str, Any]]:
        """Stream declarations for the `ready` message."""
        out = []
        if self.audio:
            out.append(
                {
                    "id": AUDIO_STREAM,
                    "kind": "audio",
                    "codec": self.audio.codec.name.lower(),
                    "clock_hz": self.audio.clock_hz,
                    "sample_rate_hz": self.audio.clock_hz,
                    "channels": 1,
                }
            )
        if self.video:
            v = self.session.spec.output_video
            out.append(
                {
                    "id": VIDEO_STREAM,
                    "kind": "video",
                    "codec": self.video.codec.name.lower(),
                    "clock_hz": self.video.clock_hz,
                    "width": v.width,
                    "height": v.height,
                    "fps": v.fps,
                }
            )
        return out

    async def run(self) -> None:
        """Send until the session's outbox is closed and drained."""
        loop = asyncio.get_running_loop()
        while (item := await self.session.outbox.get()) is not None:
            if isinstance(item, dict):
                await self.ws.send_str(json.dumps(item))
                continue
            await self._send_chunk(item, loop)

    async def _send_chunk(self, chunk: OutputChunk, loop: asyncio.AbstractEventLoop) -> None:
        frames: list[bytes] = []
        if self.audio is not None and chunk.audio is not None:
            # Audio encoding is ~0.2 ms per 20 ms packet: cheaper inline than a thread hop.
            for p in self.audio.encode(chunk.audio, chunk.audio_pts):
                frames.append(self._frame(MediaKind.AUDIO, self.audio.codec, AUDIO_STREAM, p.pts, p.payload, p.flags))
        if self.video is not None and chunk.video is not None:
            packets = await loop.run_in_executor(self.codec_pool, self.video.encode, chunk.video, chunk.video_pts)
            for p in packets:
                frames.append(self._frame(MediaKind.VIDEO, self.video.codec, VIDEO_STREAM, p.pts, p.payload, p.flags))
        for frame in frames:
            await self.ws.send_bytes(frame)

    def _frame(self, kind: MediaKind, codec: int, stream: int, pts: int, payload: bytes, flags: int) -> bytes:
        seq = self._seq[stream]
        self._seq[stream] = seq + 1
        return pack_media(kind, codec, stream, seq, pts, payload, flags)


class WsConnection:
    """One client WebSocket: at most one session at a time (``start`` again after ``stop``)."""

    def __init__(self, ws: web.WebSocketResponse, engine: Engine, config: WsConfig, codec_pool: Executor) -> None:
        self.ws = ws
        self.engine = engine
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
            await self.end_session("client disconnected", notify=False)

    async def shutdown(self) -> None:
        """Server shutdown: tell the client, close its session and the socket."""
        await self._send_error(ShutdownError("server shutting down"))
        await self.end_session("server shutting down", notify=False)
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    # -- receiving -----------------------------------------------------------------------------------
    async def _on_text(self, text: str) -> None:
        message = parse_control(text)
        kind = message["type"]
        if kind == "start":
            await self._start(message)
        elif kind == "stop":
            if self.session is None:
                raise ProtocolError("'stop' without a running session", "not_started")
            await self.end_session("stopped by client", notify=True)
        elif kind == "ping":
            await self.ws.send_str(json.dumps({"type": "pong", "t": message.get("t"), "server_time": time.time()}))
        elif kind == "request_keyframe":
            if self._sender is not None and self._sender.video is not None:
                self._sender.video.request_keyframe()
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
    async def _start(self, message: dict[str, Any]) -> None:
        if self.session is not None and self.session.running:
            raise ProtocolError("a session is already running on this connection; 'stop' it first")
        if self.session is not None:  # ended by the server (fatal error): its sender has drained
            await self.end_session(self.session.close_reason or "ended", notify=False)
        request = parse_start(message)
        session = self.engine.new_session(request.model, request.params, request.input_sample_rate_hz)
        sender = SessionSender(self.ws, session, request.audio_codec, request.video_codec, self.codec_pool)
        await self.engine.open_session(session)
        self.session, self._sender = session, sender
        ready = {
            "type": "ready",
            "protocol": PROTOCOL_VERSION,
            "session": session.id,
            "model": session.model,
            "params": session.params,
            "streams": sender.streams(),
            **session.spec.describe(),
        }
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
