"""WebRTC transport (aiortc): the peer of the WebSocket transport over the same Session and Engine.

Signalling is one HTTP exchange, non-trickle ICE as in aiortc's examples: ``POST /offer`` with
``{"sdp", "type": "offer", "model", "params"}`` is answered by ``{"sdp", "type": "answer", "session"}``,
or by HTTP 400 (bad offer, bad parameters) / 503 (at capacity) with an ``error`` message as body.

One :class:`RtcPeer` is one peer connection serving one session. Data flows one way per direction:

* in: the remote audio track -> :class:`~streaming.media.resample.CausalResampler` to the model rate ->
  ``session.push_audio`` (pts from RTP, so lost packets become gap-filled silence);
* out: one task drains the session's outbox: control messages go to the data channel, media chunks to an
  :class:`~streaming.media.pacing.AudioPacer` / :class:`~streaming.media.pacing.VideoPacer`; aiortc's
  senders pull from :class:`PacedAudioTrack` / :class:`PacedVideoTrack`, which release one frame per slot
  of the pacer's clock (underruns send silence or repeat a frame and are counted in metrics);
* control: a data channel opened by the client carries the WebSocket protocol's JSON messages (``ping``,
  ``stop``, ``request_keyframe`` and the model's events) and brings back ``ready``, ``stats``, ``error``,
  ``stopped`` and the model's notices.

Whatever ends a peer (client ``stop``, data channel or connection closed, ICE not connecting in time, the
session failing, server shutdown) goes through :meth:`RtcPeer.close`, which is idempotent and releases
the session, the tasks and the peer connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import av
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from models.base import Pacing, StreamSpec
from streaming.engine.core import Engine
from streaming.errors import CapacityError, CausalcastError, ProtocolError, ShutdownError
from streaming.media.audio import float_to_pcm16
from streaming.media.codecs import AudioEncoder
from streaming.media.pacing import AudioPacer, PacingConfig, VideoPacer
from streaming.media.resample import CausalResampler
from streaming.protocol import PROTOCOL_VERSION, VIDEO_CLOCK_HZ, AudioCodec, parse_control
from streaming.session import Session
from streaming.transports import rtc_support

log = logging.getLogger(__name__)

RTC_AUDIO_RATE_HZ = 48_000  # what aiortc's Opus encoder takes without resampling (no added packet delay)
RTC_AUDIO_FRAME_S = 0.020
AUDIO_CODECS = frozenset({"opus", "pcmu", "pcma"})
VIDEO_CODECS = frozenset({"vp8", "h264"})
SEND_DIRECTIONS = frozenset({"sendrecv", "sendonly"})  # the offerer sends media in this section
RECV_DIRECTIONS = frozenset({"sendrecv", "recvonly"})  # the offerer receives media in this section
_DIRECTIONS = {
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
    connect_timeout_s: float = 15.0  # ICE + DTLS must be up this long after the answer
    audio_prefetch: int = 0  # packets aiortc's audio receiver holds before decoding (aiortc's default: 4)
    pacing: PacingConfig = field(default_factory=PacingConfig)
    max_message_bytes: int = 64 * 1024  # data channel messages
    max_offer_bytes: int = 256 * 1024
    max_errors_per_s: int = 50
    stats_interval_s: float = 1.0
    max_pending_control: int = 256  # control messages held until the data channel opens


@dataclass(frozen=True)
class OfferInfo:
    """What an offer asks for, checked against a model before any peer connection exists."""

    sends_audio: bool
    receives_audio: bool
    receives_video: bool
    has_data_channel: bool


def inspect_offer(sdp: str, spec: StreamSpec, model: str) -> OfferInfo:
    """Validate an SDP offer for a model; raises :class:`ProtocolError` (code ``bad_offer``) with a reason."""
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
        supported = AUDIO_CODECS if media.kind == "audio" else VIDEO_CODECS
        if not names & supported:
            raise ProtocolError(
                f"offer's {media.kind} section has no codec the server speaks (offered: {sorted(names) or 'none'}; "
                f"supported: {sorted(supported)})",
                "unsupported_codec",
            )
        direction = media.direction or "sendrecv"
        if media.kind == "audio":
            sends_audio |= direction in SEND_DIRECTIONS
            receives_audio |= direction in RECV_DIRECTIONS
        else:
            receives_video |= direction in RECV_DIRECTIONS
    if spec.input_audio is not None and spec.pacing is Pacing.INPUT and not sends_audio:
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


class PacedAudioTrack(MediaStreamTrack):
    """Outgoing audio: 20 ms at 48 kHz per slot of an :class:`AudioPacer` holding model-rate audio.

    Once Opus is negotiated (:meth:`use_opus`) the track hands aiortc finished Opus packets: encoding a
    packet inline costs less than aiortc's hop to an executor thread for it, and lets us use Opus's
    low-delay mode (2.5 ms look-ahead instead of 6.5 ms). Otherwise (G.711) it hands over PCM frames.
    """

    kind = "audio"

    def __init__(self, pacer: AudioPacer, on_underrun: Any = None) -> None:
        super().__init__()
        self.pacer = pacer
        self._resampler = CausalResampler(pacer.sample_rate_hz, RTC_AUDIO_RATE_HZ)
        self._samples_per_frame = round(RTC_AUDIO_RATE_HZ * RTC_AUDIO_FRAME_S)
        self._time_base = fractions.Fraction(1, RTC_AUDIO_RATE_HZ)
        self._on_underrun = on_underrun
        self._underruns = 0
        self._opus: AudioEncoder | None = None

    def use_opus(self, bitrate_bps: int = 48_000) -> None:
        """Send pre-encoded Opus (call once the answer has chosen Opus)."""
        self._opus = AudioEncoder(AudioCodec.OPUS, RTC_AUDIO_RATE_HZ, bitrate_bps)

    async def recv(self) -> av.AudioFrame | av.Packet:
        """The next frame (or Opus packet), at its slot."""
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            index = self.pacer.frame_index
            samples = await self.pacer.next_frame()
            if samples is None:
                self.stop()
                raise MediaStreamError
            self._report_underruns()
            pcm48 = self._resampler.process(samples)
            pts = index * self._samples_per_frame
            if self._opus is None:
                frame = rtc_support.stereo_s16_frame(float_to_pcm16(pcm48), RTC_AUDIO_RATE_HZ)
                frame.pts, frame.time_base = pts, self._time_base
                return frame
            for encoded in self._opus.encode(pcm48, pts):  # one 20 ms packet per 20 ms frame
                packet = av.Packet(encoded.payload)
                packet.pts, packet.time_base = encoded.pts, self._time_base
                return packet

    def _report_underruns(self) -> None:
        new = self.pacer.stats.underruns - self._underruns
        if new and self._on_underrun is not None:
            self._on_underrun("audio", new)
        self._underruns = self.pacer.stats.underruns

    def stop(self) -> None:
        """End the track (and the pacer feeding it)."""
        self.pacer.close()
        super().stop()


class PacedVideoTrack(MediaStreamTrack):
    """Outgoing video: RGB frames from a :class:`VideoPacer` on the 90 kHz clock."""

    kind = "video"

    def __init__(self, pacer: VideoPacer, on_underrun: Any = None) -> None:
        super().__init__()
        self.pacer = pacer
        self._ticks_per_frame = VIDEO_CLOCK_HZ / pacer.fps
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        self._on_underrun = on_underrun

    async def recv(self) -> av.VideoFrame:
        """The next frame (or the last one again on an underrun), at its slot."""
        if self.readyState != "live":
            raise MediaStreamError
        index = self.pacer.frame_index
        item = await self.pacer.next_frame()
        if item is None:
            self.stop()
            raise MediaStreamError
        rgb, repeated = item
        if repeated and self._on_underrun is not None:
            self._on_underrun("video", 1)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = round(index * self._ticks_per_frame)
        frame.time_base = self._time_base
        return frame

    def stop(self) -> None:
        """End the track (and the pacer feeding it)."""
        self.pacer.close()
        super().stop()


class RtcPeer:
    """One WebRTC peer connection serving one session."""

    def __init__(self, hub: RtcHub, pc: RTCPeerConnection, session: Session) -> None:
        self.hub = hub
        self.pc = pc
        self.session = session
        self.config = hub.config
        self.channel: RTCDataChannel | None = None
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self._closing = False
        self._pending: deque[dict[str, Any]] = deque(maxlen=self.config.max_pending_control)
        self._tasks: set[asyncio.Task[None]] = set()
        self._error_times: deque[float] = deque()
        self._last_input = 0.0
        self._closer: asyncio.Task[None] | None = None
        spec = session.spec
        active = self._output_expected
        self.audio_track: PacedAudioTrack | None = None
        self.video_track: PacedVideoTrack | None = None
        if spec.output_audio is not None:
            pacer = AudioPacer(
                spec.output_audio.sample_rate_hz,
                round(spec.output_audio.sample_rate_hz * RTC_AUDIO_FRAME_S),
                self.config.pacing,
                active=active,
            )
            self.audio_track = PacedAudioTrack(pacer, self._count_underruns)
        if spec.output_video is not None:
            self.video_track = PacedVideoTrack(
                VideoPacer(spec.output_video.fps, self.config.pacing, active=active), self._count_underruns
            )

    # -- wiring -----------------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register peer-connection handlers (before the remote description is set)."""
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_connection_state)

    def start(self) -> None:
        """Start the output pump and the connect watchdog (after the answer is ready)."""
        self._spawn(self._pump_output(), "out")
        self._spawn(self._watch_connect(), "watch")
        self._spawn(self._report_stats(), "stats")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"rtc-{name}-{self.session.id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("peer %s: task %s failed", self.session.id, task.get_name(), exc_info=task.exception())
            self._close_soon("internal error")

    def _close_soon(self, reason: str, error: CausalcastError | None = None) -> None:
        if not self._closing and self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close(reason, error))

    @property
    def _pc_closing(self) -> bool:
        return self.pc.signalingState == "closed"

    def _output_expected(self) -> bool:
        session = self.session
        if not session.running or session.outbox.media_full:
            return False
        if session.spec.pacing is Pacing.INPUT:  # input stalled on the client's side is not an underrun
            return time.monotonic() - self._last_input < 0.1
        return not session.idle

    def _count_underruns(self, kind: str, num: int) -> None:
        self.hub.engine.metrics.underruns.labels(self.session.model, kind).inc(num)

    # -- input ------------------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self.session.input is not None:
            self._spawn(self._pump_input(track), "in")

    async def _pump_input(self, track: MediaStreamTrack) -> None:
        """Remote audio -> model rate -> session (pts from RTP; gaps become silence in the session)."""
        rate = self.session.spec.input_audio.sample_rate_hz
        resampler: CausalResampler | None = None
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            if resampler is None or resampler.in_rate_hz != frame.sample_rate:
                resampler = CausalResampler(frame.sample_rate, rate)
            samples = rtc_support.mono_samples(frame)
            out = resampler.process(samples)
            pts = round(frame.pts * rate / frame.sample_rate) if frame.pts is not None else None
            self._last_input = time.monotonic()
            try:
                self.session.push_audio(float_to_pcm16(out).tobytes(), pts)
            except CausalcastError as e:
                self.send_error(e)
        if not self._closing and self.session.spec.pacing is Pacing.INPUT:
            self._close_soon("connection closed" if self._pc_closing else "client audio ended")

    # -- control ----------------------------------------------------------------------------------------
    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:  # one control channel; extra ones are refused
            channel.close()
            return
        self.channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._close_soon("data channel closed"))
        if channel.readyState == "open":
            self._on_channel_open()
        else:
            channel.on("open", self._on_channel_open)

    def _on_channel_open(self) -> None:
        spec = self.session.spec
        streams = [k for k, v in (("audio", spec.output_audio), ("video", spec.output_video)) if v is not None]
        self._send_now(
            {
                "type": "ready",
                "protocol": PROTOCOL_VERSION,
                "transport": "webrtc",
                "session": self.session.id,
                "model": self.session.model,
                "params": self.session.params,
                "streams": streams,
                **spec.describe(),
            }
        )
        while self._pending:
            self._send_now(self._pending.popleft())

    def _on_message(self, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes):
                raise ProtocolError("the control channel takes JSON text messages, not binary", "bad_message")
            if len(message) > self.config.max_message_bytes:
                raise ProtocolError(f"control message of {len(message)} bytes is too large", "too_large")
            self._handle_control(parse_control(message))
        except CausalcastError as e:
            self.send_error(e)

    def _handle_control(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "ping":
            self.send({"type": "pong", "t": message.get("t"), "server_time": time.time()})
        elif kind == "stop":
            self._close_soon("stopped by client")
        elif kind == "request_keyframe":
            for transceiver in self.pc.getTransceivers():
                if transceiver.kind == "video" and transceiver.sender.track is not None:
                    transceiver.sender._send_keyframe()
        elif kind == "start":
            raise ProtocolError("the session was started by the offer; 'start' is for WebSocket clients")
        else:
            if not self.session.running:
                raise ProtocolError(f"'{kind}' after the session ended", "not_started")
            self.session.push_event(kind, {k: v for k, v in message.items() if k != "type"})

    def send(self, message: dict[str, Any]) -> None:
        """Send a control message now, or once the data channel opens."""
        if self.channel is not None and self.channel.readyState == "open":
            self._send_now(message)
        elif not self._closing:
            self._pending.append(message)

    def _send_now(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # a channel closing under us: the close path handles it
            self.channel.send(json.dumps(message))

    def send_error(self, error: CausalcastError) -> None:
        """Report an error; a client flooding errors is disconnected."""
        self.hub.engine.metrics.errors.labels(error.code).inc()
        now = time.monotonic()
        self._error_times.append(now)
        while self._error_times and self._error_times[0] < now - 1.0:
            self._error_times.popleft()
        self.send(error.to_message())
        if len(self._error_times) > self.config.max_errors_per_s:
            self._close_soon("too many errors")

    # -- output -----------------------------------------------------------------------------------------
    async def _pump_output(self) -> None:
        """Session outbox -> data channel (control) and pacers (media), in order."""
        session = self.session
        audio = self.audio_track.pacer if self.audio_track is not None else None
        video = self.video_track.pacer if self.video_track is not None else None
        while (item := await session.outbox.get()) is not None:
            if isinstance(item, dict):
                self.send(item)
                continue
            now = time.monotonic()
            if audio is not None and item.audio is not None:
                audio.push(item.audio, now)
            if video is not None and item.video is not None:
                for frame in item.video:
                    video.push(frame, now)
        if not self._closing:  # the engine ended the session (fatal error): the error was queued above
            await self.close(session.close_reason or "session ended", notify=False)

    async def _report_stats(self) -> None:
        session = self.session
        while session.running:
            await asyncio.sleep(self.config.stats_interval_s)
            if session.running:
                self.send({"type": "stats", "session": session.id, **session.stats.snapshot(), **self.pacing_stats()})

    def pacing_stats(self) -> dict[str, Any]:
        """Input backlog, and underruns and trims of the outgoing tracks."""
        out: dict[str, Any] = {}
        audio_in = self.session.input
        if audio_in is not None:
            rate = audio_in.model_rate_hz
            out["input_backlog_ms"] = round(len(audio_in.fifo) * 1000 / rate, 1)  # waiting for the engine
            out["input_dropped_ms"] = round(audio_in.fifo.num_dropped * 1000 / rate, 1)
            out["input_gap_ms"] = round(audio_in.num_gap_samples * 1000 / audio_in.client_rate_hz, 1)
        for kind, track in (("audio", self.audio_track), ("video", self.video_track)):
            if track is not None:
                s = track.pacer.stats
                out[f"{kind}_underruns"] = s.underruns
                out[f"{kind}_late_frames"] = s.late
                out[f"{kind}_trimmed_frames"] = round(s.trimmed_frames, 2)
        return out

    async def _watch_connect(self) -> None:
        await asyncio.sleep(self.config.connect_timeout_s)
        if self.pc.connectionState != "connected" and not self._closing:
            await self.close(f"ICE/DTLS did not connect within {self.config.connect_timeout_s:g} s")

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("peer %s: connection %s", self.session.id, state)
        if state in ("failed", "closed"):
            self._close_soon(f"connection {state}")

    # -- teardown ---------------------------------------------------------------------------------------
    async def close(self, reason: str, error: CausalcastError | None = None, *, notify: bool = True) -> None:
        """End the session and the peer connection; safe to call from anywhere, any number of times."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        self.close_reason = reason
        session = self.session
        try:
            await self.hub.engine.close_session(session, reason)
            # A peer connection already closing (signalling state "closed") has lost its client: say nothing.
            if notify and self.channel is not None and self.channel.readyState == "open" and not self._pc_closing:
                if error is not None:
                    self._send_now(error.to_message())
                self._send_now(
                    {"type": "stopped", "session": session.id, "reason": reason, "stats": session.stats.snapshot()}
                )
                await _drain_channel(self.channel)
            for track in (self.audio_track, self.video_track):
                if track is not None:
                    track.stop()
            current = asyncio.current_task()
            tasks = [t for t in self._tasks if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.pc.close()
        finally:
            self.hub.discard(self)
            self.closed.set()
            log.info("peer %s closed: %s", session.id, reason)


async def _drain_channel(channel: RTCDataChannel, timeout_s: float = 0.5) -> None:
    """Give queued data channel messages a moment to leave before the connection closes."""
    if channel.bufferedAmount > 0:
        drained = asyncio.Event()
        channel.once("bufferedamountlow", drained.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), timeout_s)
    await asyncio.sleep(0.02)  # SCTP sends on its own task; let it run once more


class RtcHub:
    """All WebRTC peers of one server: answers offers, closes everything on shutdown."""

    def __init__(self, engine: Engine, config: RtcConfig, *, ice_servers: tuple[dict[str, Any], ...]) -> None:
        self.engine = engine
        self.config = config
        self.peers: set[RtcPeer] = set()
        self.ice_servers = config.ice_servers if config.ice_servers is not None else ice_servers
        self._shutting_down = False

    def ice_plan(self, sdp: str) -> tuple[tuple[str, ...] | None, bool]:
        """Host addresses to gather from for this offer, and whether the peer is confined to loopback.

        An offer with a 127.0.0.1 candidate (tests, the bench, a browser started with
        --allow-loopback-in-peer-connection) is answered over loopback only; any other offer (a browser as
        people run it) gets aioice's usual host candidates, unless the server is configured loopback-only.
        """
        if self.config.host_addresses is not None:
            addresses = self.config.host_addresses
            return addresses, all(rtc_support.is_loopback(a) for a in addresses)
        if rtc_support.has_loopback_candidate(sdp):
            return ("127.0.0.1",), True
        if self.config.loopback_only:
            raise ProtocolError(
                "this server only connects over loopback (127.0.0.1) and the offer has no loopback candidate; "
                "a browser needs --allow-loopback-in-peer-connection",
                "bad_offer",
            )
        return None, False

    def discard(self, peer: RtcPeer) -> None:
        """Forget a closed peer."""
        self.peers.discard(peer)

    async def handle_offer(self, request: web.Request) -> web.Response:
        """``POST /offer``: answer an SDP offer with a session, or explain why not."""
        try:
            body = await self._read_offer(request)
            answer, peer = await self.answer(body)
        except CapacityError as e:
            return _error_response(e, 503)
        except ShutdownError as e:
            return _error_response(e, 503)
        except CausalcastError as e:
            self.engine.metrics.errors.labels(e.code).inc()
            return _error_response(e, 400)
        return web.json_response(answer)

    async def _read_offer(self, request: web.Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > self.config.max_offer_bytes:
            raise ProtocolError(f"offer of {request.content_length} bytes is too large", "too_large")
        raw = await request.read()
        if len(raw) > self.config.max_offer_bytes:
            raise ProtocolError(f"offer of {len(raw)} bytes is too large", "too_large")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ProtocolError(f"offer body is not valid JSON: {e}", "bad_offer") from e
        if not isinstance(body, dict):
            raise ProtocolError("offer body must be a JSON object", "bad_offer")
        if body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
            raise ProtocolError("offer body needs 'type': 'offer' and a string 'sdp'", "bad_offer")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise ProtocolError("offer body needs a string 'model'", "bad_offer")
        if not isinstance(body.get("params", {}), dict):
            raise ProtocolError("'params' must be an object", "bad_offer")
        return body

    async def answer(self, body: dict[str, Any]) -> tuple[dict[str, Any], RtcPeer]:
        """Validate an offer, admit its session, and build the answer (with gathered candidates)."""
        if self._shutting_down:
            raise ShutdownError("server shutting down")
        model, params = body["model"], body.get("params", {})
        generator = self.engine.generators.get(model)
        input_rate = generator.spec.input_audio.sample_rate_hz if generator and generator.spec.input_audio else None
        # Raises for unknown models and bad params. The transport resamples to the model rate itself.
        session = self.engine.new_session(model, params, input_rate)
        inspect_offer(body["sdp"], session.spec, model)
        host_addresses, loopback_only = self.ice_plan(body["sdp"])
        sdp = rtc_support.filter_candidates(body["sdp"], loopback_only=loopback_only)
        if loopback_only and rtc_support.count_candidates(body["sdp"]) and not rtc_support.count_candidates(sdp):
            raise ProtocolError(
                "this server gathers only loopback candidates and the offer has none; a browser needs "
                "--allow-loopback-in-peer-connection, or set the server's ICE host addresses",
                "bad_offer",
            )
        # A loopback peer never asks anyone outside the machine for candidates.
        ice_servers = () if loopback_only else self.ice_servers
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers]))
        peer = RtcPeer(self, pc, session)
        peer.attach()
        try:
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            except Exception as e:
                raise ProtocolError(f"offer rejected: {e}", "bad_offer") from e
            rtc_support.tune_audio_receivers(pc, self.config.audio_prefetch)
            for track in (peer.audio_track, peer.video_track):
                if track is not None and any(t.kind == track.kind for t in pc.getTransceivers()):
                    pc.addTrack(track)
            for transceiver in pc.getTransceivers():  # the answer declines media the model does not take
                receives = transceiver.kind == "audio" and session.input is not None
                sends = transceiver.sender.track is not None
                transceiver.direction = _DIRECTIONS[(sends, receives)]
            await self.engine.open_session(session)
            try:
                with rtc_support.gathering_from(host_addresses):
                    await pc.setLocalDescription(await pc.createAnswer())
            except Exception:
                await self.engine.close_session(session, "answer failed")
                raise
            for transceiver in pc.getTransceivers():
                codecs = transceiver._codecs  # what the answer negotiated, preferred first
                if transceiver.sender.track is peer.audio_track and codecs and codecs[0].name.lower() == "opus":
                    peer.audio_track.use_opus()
        except BaseException:
            session.close("offer failed")
            for track in (peer.audio_track, peer.video_track):
                if track is not None:
                    track.stop()
            await pc.close()
            raise
        self.peers.add(peer)
        peer.start()
        local = pc.localDescription
        return {"sdp": local.sdp, "type": local.type, "session": session.id, "model": model}, peer

    async def shutdown(self) -> None:
        """Close every peer (server shutdown), telling clients why."""
        self._shutting_down = True
        peers = list(self.peers)
        await asyncio.gather(
            *(p.close("server shutting down", ShutdownError("server shutting down")) for p in peers),
            return_exceptions=True,
        )


def _error_response(error: CausalcastError, status: int) -> web.Response:
    return web.json_response(error.to_message(), status=status)
