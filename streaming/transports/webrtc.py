"""WebRTC transport (aiortc): the peer of the WebSocket transport over the same Session and Engine.

Signalling is one HTTP exchange, non-trickle ICE as in aiortc's examples: ``POST /offer`` with
``{"sdp", "type": "offer", "model", "params", "share"}`` is answered by ``{"sdp", "type": "answer",
"session"}``, or by HTTP 400 (bad offer, bad parameters) / 503 (at capacity) with an ``error`` message as
body. An offer with ``"watch": SESSION_ID`` instead of a model makes a receive-only viewer of a shared
session (``streaming/transports/webrtc_viewer.py``).

One :class:`RtcPeer` is one peer connection serving one session (the connection, control channel and
close path are :class:`~streaming.transports.webrtc_peer.RtcPeerBase`'s). Data flows one way per
direction:

* in: the remote audio track -> :class:`~streaming.media.resample.CausalResampler` to the model rate ->
  ``session.push_audio`` (pts from RTP, so lost packets become gap-filled silence);
* out: one task drains the session's outbox: control messages go to the data channel, media chunks to an
  :class:`~streaming.media.pacing.AudioPacer` / :class:`~streaming.media.pacing.VideoPacer`; aiortc's
  senders pull from :class:`PacedAudioTrack` / :class:`PacedVideoTrack`, which release one frame per slot
  of the pacer's clock (underruns send silence or repeat a frame and are counted in metrics); video
  follows the audio pacer's clock by the chunks' pts, so lip sync survives each pacer's own adjustments;
* control: a data channel opened by the client carries the WebSocket protocol's JSON messages (``ping``,
  ``stop``, ``request_keyframe`` and the model's events) and brings back ``ready``, ``stats``, ``error``,
  ``stopped`` and the model's notices.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import logging
import time
from typing import Any

import av
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from models.base import Pacing
from models.errors import CapacityError, CausalcastError, ProtocolError, ShutdownError
from streaming.broadcast import BroadcastHub
from streaming.engine.core import Engine
from streaming.media.audio import float_to_pcm16
from streaming.media.codecs import AudioEncoder
from streaming.media.pacing import AudioPacer, VideoPacer
from streaming.media.resample import CausalResampler
from streaming.protocol import VIDEO_CLOCK_HZ, AudioCodec, session_reply
from streaming.session import Session
from streaming.transports import rtc_support
from streaming.transports.webrtc_peer import DIRECTIONS, RtcConfig, RtcPeerBase, inspect_offer
from streaming.transports.webrtc_viewer import answer_watch

__all__ = ["RtcConfig", "RtcHub", "RtcPeer", "inspect_offer"]

log = logging.getLogger(__name__)

RTC_AUDIO_RATE_HZ = 48_000  # what aiortc's Opus encoder takes without resampling (no added packet delay)
RTC_AUDIO_FRAME_S = 0.020


class PacedAudioTrack(rtc_support.PacedTrack):
    """Outgoing audio: 20 ms at 48 kHz per slot of an :class:`AudioPacer` holding model-rate audio.

    Once Opus is negotiated (:meth:`use_opus`) the track hands aiortc finished Opus packets: encoding a
    packet inline costs less than aiortc's hop to an executor thread for it, and lets us use Opus's
    low-delay mode (2.5 ms look-ahead instead of 6.5 ms). Otherwise (G.711) it hands over PCM frames.
    """

    kind = "audio"

    def __init__(self, pacer: AudioPacer, on_underrun: Any = None) -> None:
        super().__init__(pacer)
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
            index = self.pacer.frame_index
            samples = await self._take(self.pacer.next_frame)
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

class PacedVideoTrack(rtc_support.PacedTrack):
    """Outgoing video: RGB frames from a :class:`VideoPacer` on the 90 kHz clock."""

    kind = "video"

    def __init__(self, pacer: VideoPacer, on_underrun: Any = None) -> None:
        super().__init__(pacer)
        self._ticks_per_frame = VIDEO_CLOCK_HZ / pacer.fps
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        self._on_underrun = on_underrun

    async def recv(self) -> av.VideoFrame:
        """The next frame (or the last one again on an underrun), at its slot."""
        index = self.pacer.frame_index
        rgb, repeated = await self._take(self.pacer.next_frame)
        if repeated and self._on_underrun is not None:
            self._on_underrun("video", 1)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = round(index * self._ticks_per_frame)
        frame.time_base = self._time_base
        return frame

class RtcPeer(RtcPeerBase):
    """One WebRTC peer connection serving one session."""

    kind = "session"

    def __init__(self, hub: RtcHub, pc: RTCPeerConnection, session: Session) -> None:
        super().__init__(hub, pc, session.id)
        self.session = session
        self._last_input = 0.0
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
            # Lip sync: with audio, video follows the audio pacer's clock (they are paced apart otherwise).
            follow = self.audio_track.pacer.anchor if self.audio_track is not None else None
            pacer = VideoPacer(spec.output_video.fps, self.config.pacing, active=active, follow=follow)
            self.video_track = PacedVideoTrack(pacer, self._count_underruns)

    # -- wiring -----------------------------------------------------------------------------------------
    def attach(self) -> None:
        """Register peer-connection handlers (before the remote description is set)."""
        super().attach()
        self.pc.on("track", self._on_track)

    def start(self) -> None:
        """Start the output pump and the connect watchdog (after the answer is ready)."""
        self._spawn(self._pump_output(), "out")
        self._spawn(self._watch_connect(), "watch")
        self._spawn(self._report_stats(), "stats")

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
    def _first_message(self) -> dict[str, Any]:
        spec = self.session.spec
        streams = [k for k, v in (("audio", spec.output_audio), ("video", spec.output_video)) if v is not None]
        return session_reply("ready", self.session.id, self.session.model, streams, spec.describe(),
                             transport="webrtc", params=self.session.params, shared=self.session.shared)

    def _request_keyframe(self) -> None:
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video" and transceiver.sender.track is not None:
                transceiver.sender._send_keyframe()

    def _handle_event(self, kind: str, message: dict[str, Any]) -> None:
        if not self.session.running:
            raise ProtocolError(f"'{kind}' after the session ended", "not_started")
        self.session.push_event(kind, {k: v for k, v in message.items() if k != "type"})

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
                audio.push(item.audio, now, item.audio_pts)
            if video is not None and item.video is not None:
                for frame, pts in zip(item.video, item.video_pts, strict=True):
                    video.push(frame, now, pts / VIDEO_CLOCK_HZ)
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
        if self.video_track is not None:
            out["video_sync_moves"] = self.video_track.pacer.stats.sync_moves
            out["video_sync_skips"] = self.video_track.pacer.stats.sync_skips
        return out

    # -- teardown ---------------------------------------------------------------------------------------
    async def _release(self, reason: str) -> None:
        await self.hub.engine.close_session(self.session, reason)
        if self.hub.broadcasts is not None:
            self.hub.broadcasts.unshare(self.session)

    def _stopped_message(self, reason: str) -> dict[str, Any]:
        return {"type": "stopped", "session": self.id, "reason": reason, "stats": self.session.stats.snapshot()}

    def _stop_tracks(self) -> None:
        for track in (self.audio_track, self.video_track):
            if track is not None:
                track.stop()


class RtcHub:
    """All WebRTC peers of one server: answers offers, closes everything on shutdown."""

    def __init__(
        self,
        engine: Engine,
        config: RtcConfig,
        *,
        ice_servers: tuple[dict[str, Any], ...],
        broadcasts: BroadcastHub | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.broadcasts = broadcasts  # shared sessions: producers may `share`, viewers `watch`
        self.peers: set[RtcPeerBase] = set()
        self.ice_servers = config.ice_servers if config.ice_servers is not None else ice_servers
        self._shutting_down = False

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` began: offers are refused."""
        return self._shutting_down

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

    def new_connection(self, offer_sdp: str) -> tuple[RTCPeerConnection, str, tuple[str, ...] | None]:
        """A peer connection for an offer: ``(pc, the offer's SDP as the server will apply it, host addresses)``."""
        host_addresses, loopback_only = self.ice_plan(offer_sdp)
        sdp = rtc_support.filter_candidates(offer_sdp, loopback_only=loopback_only)
        if loopback_only and rtc_support.count_candidates(offer_sdp) and not rtc_support.count_candidates(sdp):
            raise ProtocolError(
                "this server gathers only loopback candidates and the offer has none; a browser needs "
                "--allow-loopback-in-peer-connection, or set the server's ICE host addresses",
                "bad_offer",
            )
        # A loopback peer never asks anyone outside the machine for candidates.
        ice_servers = () if loopback_only else self.ice_servers
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice_servers]))
        return pc, sdp, host_addresses

    def discard(self, peer: RtcPeerBase) -> None:
        """Forget a closed peer."""
        self.peers.discard(peer)

    async def handle_offer(self, request: web.Request) -> web.Response:
        """``POST /offer``: answer an SDP offer with a session (or a viewer), or explain why not."""
        try:
            body = await self._read_offer(request)
            if "watch" in body:
                answer, _ = await answer_watch(self, body)
            else:
                answer, _ = await self.answer(body)
        except CapacityError as e:
            return _error_response(e, 503)
        except ShutdownError as e:
            return _error_response(e, 503)
        except CausalcastError as e:
            self.engine.metrics.errors.labels(e.code).inc()
            return _error_response(e, 503 if e.code == "capacity" else 400)  # e.g. a stream's viewer limit
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
        if "watch" in body:
            if not isinstance(body["watch"], str) or not body["watch"]:
                raise ProtocolError("'watch' must be the string id of a shared session", "bad_offer")
            return body
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise ProtocolError("offer body needs a string 'model' (or 'watch' with a shared session id)", "bad_offer")
        if not isinstance(body.get("params", {}), dict):
            raise ProtocolError("'params' must be an object", "bad_offer")
        if not isinstance(body.get("share", False), bool):
            raise ProtocolError("'share' must be true or false", "bad_offer")
        return body

    async def answer(self, body: dict[str, Any]) -> tuple[dict[str, Any], RtcPeer]:
        """Validate an offer, admit its session, and build the answer (with gathered candidates)."""
        if self.shutting_down:
            raise ShutdownError("server shutting down")
        model, params = body["model"], body.get("params", {})
        share = body.get("share", False)
        if share and self.broadcasts is None:
            raise ProtocolError("this server does not share streams", "bad_offer")
        generator = self.engine.generators.get(model)
        input_rate = generator.spec.input_audio.sample_rate_hz if generator and generator.spec.input_audio else None
        # Raises for unknown models and bad params. The transport resamples to the model rate itself.
        session = self.engine.new_session(model, params, input_rate)
        inspect_offer(body["sdp"], session.spec, model)
        pc, sdp, host_addresses = self.new_connection(body["sdp"])
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
                transceiver.direction = DIRECTIONS[(sends, receives)]
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
            peer._stop_tracks()
            await pc.close()
            raise
        if share:
            self.broadcasts.share(session)
        self.peers.add(peer)
        peer.start()
        local = pc.localDescription
        answer = {"sdp": local.sdp, "type": local.type, "session": session.id, "model": model, "shared": share}
        return answer, peer

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
