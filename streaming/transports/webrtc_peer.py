"""What every server-side WebRTC peer has, whether it runs a session or watches a shared one.

:class:`RtcPeerBase` owns one ``RTCPeerConnection`` and its control data channel (the WebSocket
protocol's JSON messages), the peer's background tasks, a connect watchdog and the single close path.
Client messages on the data channel go through a bounded inbox to the peer's
:class:`~streaming.transports.control.ControlEndpoint` (limits, dispatch, replies), on a task of the
peer's own, so nothing a client sends can raise into aiortc. Subclasses say what the peer is:
:class:`~streaming.transports.webrtc_session.RtcPeer` (a session from an offer with a model) and
:class:`~streaming.transports.webrtc_viewer.RtcViewer` (a viewer of a shared session, from an offer with
``watch``). Peers reach the server through :class:`RtcHost` (what
:class:`~streaming.transports.webrtc.RtcHub` provides), so this module and the peers below it never
import the hub.

Whatever ends a peer (client ``stop``, data channel or connection closed, ICE not connecting in time, the
session or stream ending, server shutdown) goes through :meth:`RtcPeerBase.close`, which is idempotent
and releases what the subclass holds (:meth:`~RtcPeerBase._release`), the tasks and the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from models.base import Pacing, StreamSpec
from models.errors import CausalcastError, ProtocolError
from streaming.broadcast import BroadcastHub
from streaming.engine.core import Engine
from streaming.media.pacing import PacingConfig
from streaming.transports import rtc_support
from streaming.transports.control import ControlEndpoint, ControlLimits

log = logging.getLogger(__name__)

AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma"})
VIEWER_AUDIO_CODECS = frozenset({"opus"})  # viewers get the shared stream's Opus packets as they are
VIDEO_CODECS = frozenset({"vp8", "h264"})
SEND_DIRECTIONS = frozenset({"sendrecv", "sendonly"})  # the offerer sends media in this section
RECV_DIRECTIONS = frozenset({"sendrecv", "recvonly"})  # the offerer receives media in this section
DIRECTIONS = {
    (True, True): "sendrecv",
    (True, False): "sendonly",
    (False, True): "recvonly",
    (False, False): "inactive",
}


@dataclass(frozen=True)
class RtcConfig:
    """Settings of the WebRTC transport."""

    # Host candidate addresses the server gathers from. None: per offer, 127.0.0.1 only when the offer
    # has a loopback candidate (tests, the bench), else aioice's default (every non-loopback interface).
    host_addresses: tuple[str, ...] | None = None
    loopback_only: bool = False  # refuse offers without a loopback candidate (hermetic test machines)
    # ICE servers the server itself uses; None: the ones given to clients (ServerConfig.ice_servers).
    ice_servers: tuple[dict[str, Any], ...] | None = None
    # ICE + DTLS must be up this long after the answer. Until then the offer holds no session slot (its
    # session opens at connect), only a per-client pending-offer slot, so this is short.
    connect_timeout_s: float = 5.0
    audio_prefetch: int = 0  # packets aiortc's audio receiver holds before decoding (aiortc's default: 4)
    pacing: PacingConfig = field(default_factory=PacingConfig)
    # Viewers of shared streams: pre-encoded packets released on their pts (streaming.media.packet_pacing.MediaClock).
    # The margin absorbs the jitter of the shared encode (video encoding runs on the codec pool).
    viewer_pacing: PacingConfig = field(
        default_factory=lambda: PacingConfig(margin_ms=5.0, grace_ms=15.0, window_s=0.5)
    )
    max_message_bytes: int = 64 * 1024  # data channel messages
    max_offer_bytes: int = 1024 * 1024  # a start parameter may hold a voice clip (10 s of 16 kHz WAV as base64)
    # The whole offer body must arrive this long after its headers (a client trickling it would hold the
    # socket and a task indefinitely); 1 MiB at 1 Mbit/s takes 8.4 s.
    offer_body_timeout_s: float = 10.0
    # The offer's SDP, checked by counting before anything parses it: browsers' offers are 2-8 kB, up to
    # ~250 lines with ~50 codecs (rtpmap lines), 3 media sections and a few dozen candidates. Answering
    # costs loop time per line, most per codec (550 codec lines: one 16 ms callback; a 390 kB SDP of
    # them took 128 ms just to parse), each media section gets ICE and DTLS transports, and each remote
    # candidate gets connectivity checks sent to it: an offer far past these sizes is a `bad_offer`.
    max_sdp_chars: int = 32 * 1024
    max_sdp_lines: int = 400
    max_offer_codecs: int = 128
    max_media_sections: int = 8
    max_offer_candidates: int = 100
    stats_interval_s: float = 1.0
    max_pending_control: int = 256  # control messages held until the data channel opens
    # Client messages waiting for the control endpoint (its rate budget); more are dropped: a data channel
    # cannot push back on its sender as a TCP socket does.
    max_inbox_messages: int = 256


@dataclass(frozen=True)
class OfferInfo:
    """What an offer asks for, checked against a model before any peer connection exists."""

    sends_audio: bool
    receives_audio: bool
    receives_video: bool
    has_data_channel: bool


def inspect_offer(sdp: str, spec: StreamSpec, model: str, *, viewer: bool = False) -> OfferInfo:
    """Validate an SDP offer for a model; raises :class:`ProtocolError` (code ``bad_offer``) with a reason.

    A ``viewer`` (of a shared session) needs no microphone, and takes audio as Opus only.
    """
    if not sdp.lstrip().startswith("v=0"):
        raise ProtocolError("offer SDP is malformed: it must start with 'v=0'", "bad_offer")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as e:  # aiortc's parser raises assorted errors on junk
        raise ProtocolError(f"offer SDP is malformed: {e}", "bad_offer") from e
    if not description.media:
        raise ProtocolError("offer SDP has no media sections", "bad_offer")
    sends_audio = receives_audio = receives_video = has_data = False
    for media in description.media:
        if not media.ice.usernameFragment or not media.ice.password:
            raise ProtocolError(f"offer's {media.kind} section has no ICE credentials", "bad_offer")
        if media.kind == "application":
            has_data = True
            continue
        if media.kind not in ("audio", "video"):
            continue
        names = {c.mimeType.split("/")[-1].lower() for c in media.rtp.codecs}
        direction = media.direction or "sendrecv"
        if media.kind == "audio":
            supported = VIEWER_AUDIO_CODECS if viewer else AUDIO_CODECS
        else:
            supported = VIDEO_CODECS
        if not names & supported and (not viewer or direction in RECV_DIRECTIONS):
            raise ProtocolError(
                f"offer's {media.kind} section has no codec the server speaks (offered: {sorted(names) or 'none'}; "
                f"supported: {sorted(supported)})",
                "unsupported_codec",
            )
        if media.kind == "audio":
            sends_audio |= direction in SEND_DIRECTIONS
            receives_audio |= direction in RECV_DIRECTIONS
        else:
            receives_video |= direction in RECV_DIRECTIONS
    if not viewer and spec.input_audio is not None and spec.pacing is Pacing.INPUT and not sends_audio:
        raise ProtocolError(
            f"model '{model}' needs microphone audio, but the offer sends no audio "
            "(add a sendrecv or sendonly audio section)",
            "bad_offer",
        )
    wants = (spec.output_audio is not None and receives_audio) or (spec.output_video is not None and receives_video)
    if not wants:
        outputs = [k for k, v in (("audio", spec.output_audio), ("video", spec.output_video)) if v is not None]
        raise ProtocolError(
            f"the offer receives none of model '{model}''s outputs ({' and '.join(outputs)})", "bad_offer"
        )
    return OfferInfo(sends_audio, receives_audio, receives_video, has_data)


def check_sdp_size(sdp: str, config: RtcConfig) -> None:
    """Refuse an SDP too large to be a browser's offer, by counting (cheap) before anything parses it."""
    if len(sdp) > config.max_sdp_chars:
        limit = config.max_sdp_chars
        raise ProtocolError(f"offer SDP of {len(sdp)} characters is too long (limit {limit})", "bad_offer")
    lines = sdp.splitlines()  # as aiortc's parser splits them
    counts = (
        ("lines", len(lines), config.max_sdp_lines),
        ("codecs", sum(1 for line in lines if line.startswith("a=rtpmap:")), config.max_offer_codecs),
        ("media sections", sum(1 for line in lines if line.startswith("m=")), config.max_media_sections),
        ("candidates", sum(1 for line in lines if line.startswith("a=candidate:")), config.max_offer_candidates),
    )
    for what, num, limit in counts:
        if num > limit:
            raise ProtocolError(f"offer SDP has {num} {what} (limit {limit})", "bad_offer")


async def set_offer(pc: RTCPeerConnection, sdp: str) -> None:
    """Apply a client's offer to ``pc``; :class:`ProtocolError` ``bad_offer`` for one aiortc cannot use."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
    except Exception as e:  # aiortc raises many types for malformed SDP
        raise ProtocolError(f"offer rejected: {e}", "bad_offer") from e
    if not rtc_support.has_transports(pc):
        raise ProtocolError("offer rejected: a media section has no transport (check its BUNDLE group)", "bad_offer")


class RtcHost(Protocol):
    """What a peer needs from the server side: the engine, settings, shared streams and the peer registry."""

    engine: Engine
    config: RtcConfig
    control: ControlLimits
    broadcasts: BroadcastHub | None
    peers: set[RtcPeerBase]

    @property
    def shutting_down(self) -> bool:
        """True once the server began shutting down: offers are refused."""

    def new_connection(self, offer_sdp: str) -> tuple[RTCPeerConnection, str, tuple[str, ...] | None]:
        """A peer connection for an offer: ``(pc, the offer's SDP as applied, host addresses to gather from)``."""

    def discard(self, peer: RtcPeerBase) -> None:
        """Forget a closed peer."""


class RtcPeerBase:
    """One peer connection and its control channel; subclasses supply what the peer serves."""

    kind = "peer"  # for task names and logs

    def __init__(self, hub: RtcHost, pc: RTCPeerConnection, peer_id: str) -> None:
        self.hub = hub
        self.pc = pc
        self.id = peer_id
        self.config = hub.config
        self.channel: RTCDataChannel | None = None
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._closing = False
        self._pending: deque[dict[str, Any]] = deque(maxlen=self.config.max_pending_control)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closer: asyncio.Task[None] | None = None
        self._inbox: deque[str | bytes] = deque()
        self._inbox_ready = asyncio.Event()
        self._inbox_dropped = 0
        self.control = ControlEndpoint(
            self,
            self._send_async,
            hub.control,
            hub.engine.metrics,
            max_message_bytes=self.config.max_message_bytes,
            stats_interval_s=self.config.stats_interval_s,
            transport="webrtc",
        )

    # -- what a subclass supplies ---------------------------------------------------------------------
    def _first_message(self) -> dict[str, Any]:
        """Sent when the control channel opens (`ready`, `watching`)."""
        raise NotImplementedError

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """A control message that is not ping/stop/request_keyframe/start/watch (a model event)."""
        raise NotImplementedError

    def request_keyframe(self) -> None:
        """The client asked for a key frame."""

    async def _release(self, reason: str) -> None:
        """Free what the peer serves (first step of :meth:`close`)."""

    def _stopped(self, reason: str) -> tuple[str, dict[str, Any]]:
        """The session id the client knows and the extra fields of its `stopped` message."""
        return self.id, {}

    def stop_tracks(self) -> None:
        """Stop the outgoing tracks (and what feeds them)."""

    # -- wiring ---------------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register peer-connection handlers (before the remote description is set)."""
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"rtc-{self.kind}-{name}-{self.id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s %s: task %s failed", self.kind, self.id, task.get_name(), exc_info=task.exception())
            self._close_soon("internal error")

    def _close_soon(self, reason: str, error: CausalcastError | None = None) -> None:
        if not self._closing and self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close(reason, error))

    @property
    def _pc_closing(self) -> bool:
        return self.pc.signalingState == "closed"

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self.config.connect_timeout_s)
        if self.pc.connectionState != "connected" and not self._closing:
            await self.close(f"ICE/DTLS did not connect within {self.config.connect_timeout_s:g} s")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("%s %s: connection %s", self.kind, self.id, state)
        if state in ("failed", "closed"):
            self._close_soon(f"connection {state}")

    # -- control --------------------------------------------------------------------------------------
    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:  # one control channel; extra ones are refused
            channel.close()
            return
        self.channel = channel
        channel.on("message", self._on_message)
        self._spawn(self._read_inbox(), "control")
        channel.on("close", lambda: self._close_soon("data channel closed"))
        if channel.readyState == "open":
            self._on_channel_open()
        else:
            channel.on("open", self._on_channel_open)

    def _on_channel_open(self) -> None:
        self._send_now(self._first_message())
        while self._pending:
            self._send_now(self._pending.popleft())

    def _on_message(self, message: str | bytes) -> None:
        """The data channel's callback: queue the message for :meth:`_read_inbox` (nothing here raises)."""
        if len(self._inbox) >= self.config.max_inbox_messages:
            self._inbox_dropped += 1
            return
        self._inbox.append(message)
        self._inbox_ready.set()

    async def _read_inbox(self) -> None:
        """Client messages, in order, through the control endpoint (which waits for the rate budget)."""
        while True:
            while not self._inbox:
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
            if not await self.control.receive(self._inbox.popleft()):
                self._close_soon("too many errors")
                return
            if self._inbox_dropped:
                num, self._inbox_dropped = self._inbox_dropped, 0
                limit = self.config.max_inbox_messages
                await self.control.report_dropped("inbox", num, f"more than {limit} messages waited for the server")

    # -- the control handler (see streaming.transports.control) ------------------------------------------
    async def on_start(self, message: dict[str, Any]) -> None:
        """``start`` is for WebSocket clients."""
        raise ProtocolError(f"the {self.kind} was started by the offer; 'start' is for WebSocket clients")

    async def on_watch(self, message: dict[str, Any]) -> None:
        """``watch`` is for WebSocket clients (an offer with ``watch`` makes a viewer)."""
        raise ProtocolError(f"the {self.kind} was started by the offer; 'watch' is for WebSocket clients")

    async def on_stop(self) -> None:
        """``stop``: close the peer (the close path says `stopped`)."""
        self._close_soon("stopped by client")

    def on_keyframe_request(self) -> None:
        """``request_keyframe`` on the data channel."""
        self.request_keyframe()

    def on_media(self, data: bytes) -> None:
        """Binary messages are refused: media travels as RTP."""
        raise ProtocolError("the control channel takes JSON text messages, not binary", "bad_message")

    def send(self, message: dict[str, Any]) -> None:
        """Send a control message now, or once the data channel opens."""
        if self.channel is not None and self.channel.readyState == "open":
            self._send_now(message)
        elif not self._closing:
            self._pending.append(message)

    async def _send_async(self, message: dict[str, Any]) -> None:
        self.send(message)

    def _send_now(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a channel closing under us: the close path handles it
            self.channel.send(json.dumps(message))

    async def send_error(self, error: CausalcastError) -> None:
        """Report an error; a client flooding errors is disconnected."""
        if not await self.control.send_error(error):
            self._close_soon("too many errors")

    # -- teardown -------------------------------------------------------------------------------------
    async def close(self, reason: str, error: CausalcastError | None = None, *, notify: bool = True) -> None:
        """End the peer; safe to call from anywhere, any number of times."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        try:
            await self._release(reason)
            # A peer connection already closing (signalling state "closed") has lost its client: say nothing.
            if notify and self.channel is not None and self.channel.readyState == "open" and not self._pc_closing:
                if error is not None:
                    self._send_now(error.to_message())
                session_id, fields = self._stopped(reason)
                await self.control.send_stopped(session_id, reason, **fields)
                await drain_channel(self.channel)
            self.stop_tracks()
            self.control.stop_stats()
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.pc.close()
        finally:
            self.hub.discard(self)
            self.closed.set()
            log.info("%s %s closed: %s", self.kind, self.id, reason)


async def drain_channel(channel: RTCDataChannel, timeout_s: float = 0.5) -> None:
    """Give queued data channel messages a moment to leave before the connection closes."""
    if channel.bufferedAmount > 0:
        drained = asyncio.Event()
        channel.once("bufferedamountlow", drained.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), timeout_s)
    await asyncio.sleep(0.02)  # SCTP sends on its own task; let it run once more
