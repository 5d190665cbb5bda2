"""WebSocket transport: the causalcast protocol (docs/protocol.md) over one aiohttp WebSocket.

Data flows one way per direction. Receiving: text frames are control messages, binary frames are media
for the session's input buffer, both through the connection's
:class:`~streaming.transports.control.ControlEndpoint` (limits, dispatch, replies); nothing here waits
on a model. A client over its message or byte budget is read more slowly (TCP backpressure). Sending:
one task per session drains its outbox (control first, then media), encodes media (video encoding on
the codec thread pool, never on the loop) and writes frames; TCP backpressure from a slow reader stalls
only that task, and the bounded outbox drops that session's oldest media instead of growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from models.errors import ProtocolError, ShutdownError
from streaming.auth import Access
from streaming.broadcast import Broadcast, BroadcastHub, Viewer
from streaming.engine.core import Engine
from streaming.media.audio import pcm16_to_float
from streaming.media.wire import WireEncoder
from streaming.protocol import (
    AudioCodec,
    MediaKind,
    VideoCodec,
    parse_output,
    parse_start,
    session_reply,
    unpack_media,
)
from streaming.session import Session
from streaming.transports.control import ControlEndpoint, ControlLimits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WsConfig:
    """Limits of the WebSocket transport."""

    max_message_bytes: int = 2 * 1024 * 1024
    stats_interval_s: float = 1.0
    drain_timeout_s: float = 2.0  # how long a stopping session may take to flush its output
    # Kernel send buffer per socket. Real-time media should be dropped, not queued for seconds in the
    # kernel: a small buffer makes a slow client's backlog reach our bounded queues, which drop oldest.
    socket_send_buffer_bytes: int | None = 256 * 1024
    # A connection with no session and not watching (never started, or stopped and not restarted) is closed
    # after this long, with an `idle_timeout` error first: an unused socket holds a file descriptor and a
    # task, and nothing else bounds how many a client keeps open. Pings do not count as use. None: never.
    idle_timeout_s: float | None = 30.0


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
    """One client WebSocket: at most one session at a time (``start`` again after ``stop``).

    Messages go through one :class:`~streaming.transports.control.ControlEndpoint` (limits, dispatch,
    replies); this class is its handler: what ``start``, ``watch``, ``stop``, key frame requests, model
    events and binary audio mean on a WebSocket.
    """

    def __init__(
        self,
        ws: web.WebSocketResponse,
        engine: Engine,
        config: WsConfig,
        codec_pool: Executor,
        broadcasts: BroadcastHub,
        limits: ControlLimits | None = None,
        access: Access | None = None,
    ) -> None:
        self.ws = ws
        self.access = access  # who connected (token grant, client address): checked at start and watch
        self.engine = engine
        self.broadcasts = broadcasts
        self._watching: tuple[Broadcast, Viewer] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.config = config
        self.codec_pool = codec_pool
        self.session: Session | None = None
        self._sender: SessionSender | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._idle_since: float | None = time.monotonic()  # None while a session runs or a stream is watched
        self._num_starting = 0  # `start`/`watch` messages being handled (a start may wait on model preparation)
        self._closing_idle = False
        self.control = ControlEndpoint(
            self,
            self._send_json,
            limits or ControlLimits(),
            engine.metrics,
            max_message_bytes=config.max_message_bytes,
            stats_interval_s=config.stats_interval_s,
            transport="ws",
        )

    async def run(self) -> None:
        """Serve the connection until the client or the server closes it."""
        idle_watch = None
        if self.config.idle_timeout_s is not None:
            idle_watch = asyncio.create_task(self._close_when_idle(self.config.idle_timeout_s), name="ws-idle")
        try:
            async for msg in self.ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    if not await self.control.receive(msg.data):
                        await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many errors")
                        break
                elif msg.type is WSMsgType.ERROR:
                    await self._on_socket_error(msg.data)
                    break
        except ConnectionError as e:  # the client left while we answered it (e.g. before `ready`)
            log.debug("websocket client gone: %s", e)
        finally:
            if idle_watch is not None:
                if not self._closing_idle:
                    idle_watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await idle_watch  # a close it started completes its handshake
            await self.end_watching("client disconnected", notify=False)
            await self.end_session("client disconnected", notify=False)

    @property
    def idle(self) -> bool:
        """True while no session runs on this connection and it watches nothing."""
        return not self._num_starting and self._watching is None and (self.session is None or not self.session.running)

    async def _close_when_idle(self, timeout_s: float) -> None:
        """Close the connection once it has been idle for ``timeout_s`` (checked at each deadline)."""
        while True:  # cancelled by run() when the connection ends
            now = time.monotonic()
            if not self.idle:
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= timeout_s:
                break
            await asyncio.sleep(timeout_s if self._idle_since is None else self._idle_since + timeout_s - now)
        log.info("closing a websocket idle for %g s", timeout_s)
        self._closing_idle = True
        error = ProtocolError(
            f"no session was started or watched on this connection for {timeout_s:g} s; closing it "
            "(send 'start' or 'watch' soon after connecting)",
            "idle_timeout",
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.control.send_error(error)
            await self.ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"idle")

    async def shutdown(self) -> None:
        """Server shutdown: tell the client, close its session and the socket."""
        await self.control.send_error(ShutdownError("server shutting down"))
        await self.end_watching("server shutting down", notify=False)
        await self.end_session("server shutting down", notify=False)
        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    # -- the control handler -------------------------------------------------------------------------
    async def on_start(self, message: dict[str, Any]) -> None:
        """``start``: admit and open a session, reply ``ready``, start sending its output."""
        with self._starting():
            await self._start(message)

    async def on_watch(self, message: dict[str, Any]) -> None:
        """``watch``: attach to a shared session's broadcast, reply ``watching``, forward its frames."""
        with self._starting():
            await self._watch(message)

    @contextlib.contextmanager
    def _starting(self) -> Iterator[None]:
        """A `start` or `watch` is being handled: the connection is in use (not idle) meanwhile.

        A refused one leaves the connection idle since when it was before: failing starts do not keep it open.
        """
        idle_since = self._idle_since
        self._num_starting += 1
        try:
            yield
        finally:
            self._num_starting -= 1
            self._idle_since = (idle_since or time.monotonic()) if self.idle else None

    async def _start(self, message: dict[str, Any]) -> None:
        self._require_idle()
        if self.session is not None:  # ended by the server (fatal error): its sender has drained
            await self.end_session(self.session.close_reason or "ended", notify=False)
        request = parse_start(message)
        session = self.engine.new_session(
            request.model, request.params, request.input_sample_rate_hz, access=self.access, share=request.share
        )
        sender = SessionSender(self.ws, session, request.audio_codec, request.video_codec, self.codec_pool)
        await self.engine.open_session(session)
        # From here the session is this connection's: whatever happens next (the client leaving before
        # `ready` included), end_session releases it.
        self.session, self._sender = session, sender
        if request.share:
            self.broadcasts.share(session)
        ready = session_reply("ready", session.id, session.model, sender.encoder.streams(), session.spec.describe(),
                              params=session.params)
        await self.ws.send_str(json.dumps(ready))  # before any media: the sender starts after it
        self._send_task = asyncio.create_task(self._send(sender), name=f"send-{session.id}")
        self.control.start_stats(lambda: session.report() if session.running else None)

    async def _watch(self, message: dict[str, Any]) -> None:
        self._require_idle()
        if self.access is not None:
            self.access.grant.check_watch()
        session_id = message.get("session")
        if not isinstance(session_id, str):
            raise ProtocolError("'watch' needs the string 'session' id of a shared session")
        audio_codec, video_codec = parse_output(message)
        broadcast, viewer = self.broadcasts.watch(session_id, audio_codec, video_codec)
        self._watching = (broadcast, viewer)
        self._watch_task = asyncio.create_task(self._send_viewer(viewer), name=f"watch-{session_id}")
        session = broadcast.session
        watching = session_reply("watching", session.id, session.model, broadcast.streams(viewer),
                                 session.spec.describe())
        await self.ws.send_str(json.dumps(watching))

    async def on_stop(self) -> None:
        """``stop``: end the watching or the session, flush, reply ``stopped``."""
        if self._watching is not None:
            await self.end_watching("stopped by client", notify=True)
            return
        if self.session is None:
            raise ProtocolError("'stop' without a running session", "not_started")
        await self.end_session("stopped by client", notify=True)

    def on_keyframe_request(self) -> None:
        """``request_keyframe``: the session's next video frame is a key frame."""
        if self._sender is not None:
            self._sender.encoder.request_keyframe()

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """A model event, queued for the session's next step."""
        self._require_session(kind).push_event(kind, payload)

    def on_media(self, data: bytes) -> None:
        """Binary media: client PCM16 audio, decoded to float for the session."""
        frame = unpack_media(data)
        session = self._require_session("binary media")
        if frame.kind is not MediaKind.AUDIO or frame.codec != AudioCodec.PCM16:
            raise ProtocolError("only PCM16 audio frames are accepted from clients", "bad_frame")
        if len(frame.payload) % 2:
            raise ProtocolError("PCM16 payload has an odd number of bytes", "bad_frame")
        session.push_audio(pcm16_to_float(frame.payload), frame.pts)

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

    def _require_idle(self) -> None:
        if self.session is not None and self.session.running:
            raise ProtocolError("a session is already running on this connection; 'stop' it first")
        if self._watching is not None:
            raise ProtocolError("this connection is watching a stream; 'stop' it first")

    # -- session lifecycle ---------------------------------------------------------------------------
    async def end_session(self, reason: str, *, notify: bool) -> None:
        """Close the current session, flush what it produced (if the client is there), clean up."""
        session, self.session, self._sender = self.session, None, None
        send_task, self._send_task = self._send_task, None
        if session is None:
            return
        self._idle_since = time.monotonic()
        await self.engine.close_session(session, reason)
        self.broadcasts.unshare(session)
        self.control.stop_stats()
        if send_task is not None:
            if not notify:
                send_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(send_task, self.config.drain_timeout_s)
        if notify:
            await self.control.send_stopped(session.id, reason, stats=session.stats.snapshot())

    async def _send(self, sender: SessionSender) -> None:
        try:
            await sender.run()
        except (ConnectionError, RuntimeError) as e:  # the client went away mid-send
            log.debug("sender of %s stopped: %s", sender.session.id, e)

    # -- watching a shared session ------------------------------------------------------------------
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
        self._idle_since = time.monotonic()
        broadcast, viewer = watching
        broadcast.remove_viewer(viewer)
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if notify:
            await self.control.send_stopped(broadcast.session.id, reason, dropped_frames=viewer.num_dropped)

    async def _send_json(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(json.dumps(message))
