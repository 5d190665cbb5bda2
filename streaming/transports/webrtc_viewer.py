"""WebRTC viewers of shared sessions: receive-only peers fed with a broadcast's pre-encoded packets.

``POST /offer`` with ``{"sdp", "type": "offer", "watch": SESSION_ID}`` (no model) is answered by a peer
whose outgoing tracks send what :class:`~streaming.broadcast.Broadcast` already encoded for its codec
choice (Opus and the negotiated VP8 or H.264): aiortc's sender only packetizes an ``av.Packet`` it gets
from a track, so many viewers cost no model work and no encoding, only RTP packetization and sends.

Data flows one way: the broadcast's :class:`~streaming.broadcast.Viewer` queue -> one pump task that
sends notices to the data channel and splits media by kind -> a :class:`~streaming.media.packet_pacing.PacketPacer`
per track -> :class:`PacketTrack` -> aiortc's sender. Both pacers release packets on one
:class:`~streaming.media.packet_pacing.MediaClock` by their pts, so audio and video leave in sync and at the
stream's own rate (no bursts when the shared encode hands over a whole chunk at once).

Key frames: the viewer starts at one (the broadcast skips video until a key frame for a new viewer), and
a receiver's RTCP PLI/FIR, a ``request_keyframe`` on the data channel, or video dropped from a full pacer
reaches the shared encoder through :meth:`~streaming.broadcast.Broadcast.request_keyframe` (aiortc's own
force-keyframe flag does nothing for pre-encoded packets).
"""

from __future__ import annotations

import asyncio
import fractions
import itertools
import logging
from typing import Any

import av
from aiortc import RTCPeerConnection

from models.errors import ProtocolError, ShutdownError
from streaming.auth import Access
from streaming.broadcast import Broadcast, Viewer
from streaming.media.packet_pacing import MediaClock, PacketPacer, TimedPacket
from streaming.protocol import VIDEO_CLOCK_HZ, AudioCodec, MediaKind, VideoCodec, session_reply, unpack_media
from streaming.session import Session
from streaming.transports import rtc_support
from streaming.transports.webrtc_peer import DIRECTIONS, RtcHost, RtcPeerBase, inspect_offer, set_offer

log = logging.getLogger(__name__)

OPUS_CLOCK_HZ = 48_000
_VIEWER_NUMBERS = itertools.count(1)
_NEGOTIATED_VIDEO = {"vp8": VideoCodec.VP8, "h264": VideoCodec.H264}


class PacketTrack(rtc_support.PacedTrack):
    """An outgoing track of pre-encoded packets, each handed to aiortc at its slot on the media clock."""

    def __init__(self, kind: str, pacer: PacketPacer) -> None:
        super().__init__(pacer)
        self.kind = kind
        self._time_base = fractions.Fraction(1, pacer.clock_hz)

    async def recv(self) -> av.Packet:
        """The next packet (aiortc's sender packetizes it without decoding or encoding)."""
        timed = await self._take(self.pacer.next_packet)
        packet = av.Packet(timed.payload)
        packet.pts, packet.time_base = timed.pts, self._time_base
        return packet


class RtcViewer(RtcPeerBase):
    """One receive-only peer connection watching a shared session."""

    kind = "viewer"

    def __init__(self, hub: RtcHost, pc: RTCPeerConnection, session: Session) -> None:
        super().__init__(hub, pc, f"{session.id}/v{next(_VIEWER_NUMBERS)}")
        self.session = session  # the producer's
        self.broadcast: Broadcast | None = None
        self.viewer: Viewer | None = None
        self.clock = MediaClock(self.config.viewer_pacing)
        spec = session.spec
        self.audio_track: PacketTrack | None = None
        self.video_track: PacketTrack | None = None
        if spec.output_audio is not None:
            self.audio_track = PacketTrack("audio", PacketPacer(self.clock, OPUS_CLOCK_HZ))
        if spec.output_video is not None:
            pacer = PacketPacer(self.clock, VIDEO_CLOCK_HZ, keyed=True, on_need_key=self.request_keyframe)
            self.video_track = PacketTrack("video", pacer)

        self.video_codec = VideoCodec.VP8  # what the answer negotiated (set by answer_watch)
        self._connected = asyncio.Event()

    def start(self) -> None:
        """Start the pump, the connect watchdog and the stats (after the answer is ready)."""
        self._spawn(self._pump(), "out")
        self._spawn(self._watch_connect(), "watch")
        self.control.start_stats(lambda: {"session": self.session.id, "viewer": True, **self.viewer_stats()})

    def _on_connection_state(self) -> None:
        if self.pc.connectionState == "connected":
            self._connected.set()
        super()._on_connection_state()

    # -- control ----------------------------------------------------------------------------------------
    def _first_message(self) -> dict[str, Any]:
        spec = self.session.spec
        streams = [k for k, v in (("audio", spec.output_audio), ("video", spec.output_video)) if v is not None]
        return session_reply("watching", self.session.id, self.session.model, streams, spec.describe(),
                             transport="webrtc")

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        """Model events are the producer's to send."""
        raise ProtocolError(
            f"'{kind}' is for the stream's producer; a viewer may send ping, request_keyframe and stop", "not_started"
        )

    def request_keyframe(self) -> None:
        """The client (or a receiver's RTCP) asked for a key frame."""
        if self.broadcast is not None and self.viewer is not None:
            self.broadcast.request_keyframe(self.viewer)

    # -- output -----------------------------------------------------------------------------------------
    async def _pump(self) -> None:
        """Viewer queue -> data channel (notices) and the tracks' pacers (media), in order.

        The viewer joins the broadcast only once the connection is up: media queued while ICE and DTLS
        connect would only be released late (or make latency for the rest of the session), and joining
        now makes the broadcast's next video frame the key frame this viewer starts with.
        """
        await self._connected.wait()
        try:
            self.broadcast, self.viewer = self.hub.broadcasts.watch(self.session.id, AudioCodec.OPUS, self.video_codec)
        except ProtocolError as e:
            if e.code == "unknown_session":  # the producer ended while this viewer connected
                self.send({"type": "stream_ended", "session": self.session.id, "reason": self.session.close_reason})
                await self.close(self.session.close_reason or "stream ended", notify=False)
            else:  # e.g. the stream's viewer limit, reached by viewers that connected first
                await self.close(str(e), e)
            return
        pacers = {
            MediaKind.AUDIO: self.audio_track.pacer if self.audio_track is not None else None,
            MediaKind.VIDEO: self.video_track.pacer if self.video_track is not None else None,
        }
        while (item := await self.viewer.get()) is not None:
            if isinstance(item, dict):
                self.send(item)
                continue
            frame = unpack_media(item)
            pacer = pacers[frame.kind]
            if pacer is not None:
                pacer.push(TimedPacket(frame.payload, frame.pts, frame.is_key))
        if not self._closing:  # the producer ended: `stream_ended` went out above
            await self.close(self.viewer.end_reason or "stream ended", notify=False)

    def viewer_stats(self) -> dict[str, Any]:
        """What this viewer lost and how its clock moved."""
        clock = self.clock.stats
        dropped = self.viewer.num_dropped if self.viewer is not None else 0
        for track in (self.audio_track, self.video_track):
            if track is not None:
                dropped += track.pacer.num_dropped
        return {
            "dropped_frames": dropped,
            "late_packets": clock.late,
            "clock_late_ms": round(clock.late_s * 1000, 1),
            "clock_trimmed_ms": round(clock.trimmed_s * 1000, 1),
            "reanchors": clock.reanchors,
        }

    # -- teardown ---------------------------------------------------------------------------------------
    async def _release(self, reason: str) -> None:
        if self.broadcast is not None and self.viewer is not None:
            self.broadcast.remove_viewer(self.viewer)

    def _stopped(self, reason: str) -> tuple[str, dict[str, Any]]:
        return self.session.id, self.viewer_stats()

    def stop_tracks(self) -> None:
        """Stop the outgoing tracks (and the pacers feeding them)."""
        for track in (self.audio_track, self.video_track):
            if track is not None:
                track.stop()


async def answer_watch(
    hub: RtcHost, body: dict[str, Any], access: Access | None = None
) -> tuple[dict[str, Any], RtcViewer]:
    """Answer an offer with ``watch``: a receive-only peer of a shared session, or a clear refusal."""
    if hub.shutting_down:
        raise ShutdownError("server shutting down")
    if access is not None:
        access.grant.check_watch()
    if hub.broadcasts is None:
        raise ProtocolError("this server does not share streams", "unknown_session")
    broadcasts = hub.broadcasts
    session = broadcasts.shared_session(body["watch"])  # raises unknown_session: refused before any ICE
    limit = broadcasts.max_viewers_per_session
    if broadcasts.num_viewers(session.id) >= limit:
        raise ProtocolError(f"session {session.id} already has {limit} viewers", "capacity")
    inspect_offer(body["sdp"], session.spec, session.model, viewer=True)
    pc, sdp, host_addresses = hub.new_connection(body["sdp"])
    peer = RtcViewer(hub, pc, session)
    peer.attach()
    try:
        await set_offer(pc, sdp)
        kinds = {t.kind for t in pc.getTransceivers()}
        if peer.audio_track is not None and "audio" not in kinds:  # the viewer takes no audio: none is queued
            peer.audio_track.stop()
            peer.audio_track = None
        if peer.video_track is not None and "video" not in kinds:
            peer.video_track.stop()
            peer.video_track = None
        for track in (peer.audio_track, peer.video_track):
            if track is not None:
                sender = pc.addTrack(track)
                if track.kind == "video":
                    rtc_support.route_keyframe_requests(sender, peer.request_keyframe)
        for transceiver in pc.getTransceivers():  # a viewer only receives: the answer only sends
            transceiver.direction = DIRECTIONS[(transceiver.sender.track is not None, False)]
        try:
            with rtc_support.gathering_from(host_addresses):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:  # a malformed offer aiortc accepted but cannot answer
            raise ProtocolError(f"cannot answer this offer: {type(e).__name__}: {e}", "bad_offer") from e
        # The video codec the answer chose (VP8 also when the viewer takes no video: shared with most viewers).
        for transceiver in pc.getTransceivers():
            chosen = rtc_support.negotiated_codec(transceiver)
            if peer.video_track is not None and transceiver.sender.track is peer.video_track and chosen:
                peer.video_codec = _NEGOTIATED_VIDEO[chosen]
    except BaseException:
        peer.stop_tracks()
        await rtc_support.close_failed(pc)
        raise
    hub.peers.add(peer)
    peer.start()
    local = pc.localDescription
    return {"sdp": local.sdp, "type": local.type, "session": session.id, "model": session.model, "watching": True}, peer
