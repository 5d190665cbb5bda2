"""WebRTC session peers: one peer connection serving one session of a model (an offer with ``model``).

:func:`answer_session` turns a validated offer into an admitted session, an :class:`RtcPeer` and the SDP
answer; :class:`~streaming.transports.webrtc.RtcHub` calls it for offers that name a model. The
connection, control channel and close path are :class:`~streaming.transports.webrtc_peer.RtcPeerBase`'s.
Data flows one way per direction:

* in: the remote audio track -> float samples -> :class:`~streaming.media.resample.CausalResampler` to the
  model rate -> ``session.push_audio`` (float, pts from RTP, so lost packets become gap-filled silence);
* out: one task drains the session's outbox: control messages go to the data channel, media chunks to an
  :class:`~streaming.media.pacing.AudioPacer` / :class:`~streaming.media.pacing.VideoPacer`; aiortc's
  senders pull from :class:`PacedAudioTrack` / :class:`PacedVideoTrack`, which release one frame per slot
  of the pacer's clock (underruns send silence or repeat a frame and are counted in metrics); video
  follows the audio pacer's clock by the chunks' pts, so lip sync survives each pacer's own adjustments.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from models.base import Pacing
from models.errors import CausalcastError, ProtocolError, ShutdownError
from streaming.auth import Access
from streaming.media.audio import float_to_pcm16
from streaming.media.codecs import AudioEncoder
from streaming.media.pacing import AudioPacer, VideoPacer
from streaming.media.resample import CausalResampler
from streaming.protocol import VIDEO_CLOCK_HZ, AudioCodec, session_reply
from streaming.session import Session
from streaming.transports import rtc_support
from streaming.transports.webrtc_peer import DIRECTIONS, RtcHost, RtcPeerBase, inspect_offer, set_offer

RTC_AUDIO_RATE_HZ = 48_000  # what aiortc's Opus encoder takes without resampling (no added packet delay)
RTC_AUDIO_FRAME_S = 0.020
CHANNEL_WAIT_S = 2.0  # how long a refusal at connect waits for the data channel to carry it
_DETACHED: set[asyncio.Task[None]] = set()  # closes of sessions whose open outlived their peer


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

    def __init__(self, hub: RtcHost, pc: RTCPeerConnection, session: Session) -> None:
        super().__init__(hub, pc, session.id)
        self.session = session
        # The session opens (admission, model state) only once ICE/DTLS connects: an answered offer that
        # never connects holds no slot. `ready` waits for both the open and the data channel.
        self._opening = False
        self._opened = asyncio.Event()
        self._channel_open = asyncio.Event()
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
        session = self.session
        self.control.start_stats(lambda: {**session.report(), **self.pacing_stats()} if session.running else None)

    def _on_connection_state(self) -> None:
        super()._on_connection_state()
        if self.pc.connectionState == "connected" and not self._opening and not self._closing:
            self._opening = True
            self._spawn(self._open_session(), "open")

    async def _open_session(self) -> None:
        """Connected: admit and open the session now; a server that filled meanwhile refuses it here."""
        opening = asyncio.ensure_future(self.hub.engine.open_session(self.session))
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:  # the peer closed while the open was in flight: free what it takes
            opening.add_done_callback(self._close_late_open)
            raise
        except CausalcastError as e:
            with contextlib.suppress(asyncio.TimeoutError):  # let the refusal reach the client
                await asyncio.wait_for(self._channel_open.wait(), CHANNEL_WAIT_S)
            self._close_soon(f"refused at connect: {e}", e)
            return
        self._opened.set()
        if self._channel_open.is_set():
            super()._on_channel_open()

    def _close_late_open(self, opening: asyncio.Future[None]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._spawn_detached(self.hub.engine.close_session(self.session, self.close_reason or "closed"))

    def _spawn_detached(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _DETACHED.add(task)
        task.add_done_callback(_DETACHED.discard)

    def _on_channel_open(self) -> None:
        self._channel_open.set()
        if self._opened.is_set():
            super()._on_channel_open()

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
                self.session.push_audio(out, pts)
            except CausalcastError as e:
                await self.send_error(e)
        if not self._closing and self.session.spec.pacing is Pacing.INPUT:
            self._close_soon("connection closed" if self._pc_closing else "client audio ended")

    # -- control ----------------------------------------------------------------------------------------
    def _first_message(self) -> dict[str, Any]:
        spec = self.session.spec
        streams = [k for k, v in (("audio", spec.output_audio), ("video", spec.output_video)) if v is not None]
        return session_reply("ready", self.session.id, self.session.model, streams, spec.describe(),
                             transport="webrtc", params=self.session.params, shared=self.session.shared)

    def request_keyframe(self) -> None:
        """The client (or a receiver's RTCP) asked for a key frame."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video" and transceiver.sender.track is not None:
                rtc_support.force_keyframe(transceiver.sender)

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """A model event, queued for the session's next step."""
        if not self.session.running:
            raise ProtocolError(f"'{kind}' after the session ended", "not_started")
        self.session.push_event(kind, payload)

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

    def pacing_stats(self) -> dict[str, Any]:
        """Underruns and trims of the outgoing tracks."""
        out: dict[str, Any] = {}
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

    def _stopped(self, reason: str) -> tuple[str, dict[str, Any]]:
        return self.session.id, {"stats": self.session.stats.snapshot()}

    def stop_tracks(self) -> None:
        """Stop the outgoing tracks (and the pacers feeding them)."""
        for track in (self.audio_track, self.video_track):
            if track is not None:
                track.stop()


async def answer_session(
    hub: RtcHost, body: dict[str, Any], access: Access | None = None
) -> tuple[dict[str, Any], RtcPeer]:
    """Validate an offer with a model, admit its session, and build the answer (with gathered candidates).

    ``access``: who sent the offer (its grant and per-client cap are checked by the engine).
    """
    if hub.shutting_down:
        raise ShutdownError("server shutting down")
    model, params = body["model"], body.get("params", {})
    share = body.get("share", False)
    if share and hub.broadcasts is None:
        raise ProtocolError("this server does not share streams", "bad_offer")
    generator = hub.engine.generators.get(model)
    input_rate = generator.spec.input_audio.sample_rate_hz if generator and generator.spec.input_audio else None
    # Raises for unknown models and bad params. The transport resamples to the model rate itself.
    session = hub.engine.new_session(model, params, input_rate, access=access, share=share)
    inspect_offer(body["sdp"], session.spec, model)
    pc, sdp, host_addresses = hub.new_connection(body["sdp"])
    peer = RtcPeer(hub, pc, session)
    peer.attach()
    try:
        await set_offer(pc, sdp)
        rtc_support.tune_audio_receivers(pc, hub.config.audio_prefetch)
        for track in (peer.audio_track, peer.video_track):
            if track is not None and any(t.kind == track.kind for t in pc.getTransceivers()):
                pc.addTrack(track)
        for transceiver in pc.getTransceivers():  # the answer declines media the model does not take
            receives = transceiver.kind == "audio" and session.input is not None
            sends = transceiver.sender.track is not None
            transceiver.direction = DIRECTIONS[(sends, receives)]
        # Admitted for real when it connects (RtcPeer._open_session); refused now if it would be then.
        if access is not None:  # this client's session cap, likewise checked now and counted at connect
            hub.engine.clients.hold(session.id, access)
            hub.engine.clients.release(session.id)
        await hub.engine.check_admission(model)
        try:
            with rtc_support.gathering_from(host_addresses):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            # aiortc accepts some malformed offers and fails only here (e.g. a media section without a direction)
            raise ProtocolError(f"cannot answer this offer: {type(e).__name__}: {e}", "bad_offer") from e
        for transceiver in pc.getTransceivers():
            chosen = rtc_support.negotiated_codec(transceiver)
            if transceiver.sender.track is peer.audio_track and chosen == "opus":
                peer.audio_track.use_opus()
    except BaseException:
        session.close("offer failed")
        peer.stop_tracks()
        await rtc_support.close_failed(pc)
        raise
    if share:
        hub.broadcasts.share(session)
    hub.peers.add(peer)
    peer.start()
    local = pc.localDescription
    answer = {"sdp": local.sdp, "type": local.type, "session": session.id, "model": model, "shared": share}
    return answer, peer
