"""Small, contained adjustments to aiortc/aioice that low-latency loopback WebRTC needs.

Used by the WebRTC transport and by the Python WebRTC client alike:

* **Host candidates from chosen addresses.** aioice gathers host candidates from every interface except
  loopback. :func:`gathering_from` makes one ``setLocalDescription`` gather from a given list instead
  (``127.0.0.1`` for tests and local development), by wrapping ``aioice.ice.get_host_addresses`` once
  and consulting a context variable: connections gathered outside the context behave exactly as before.
* **Candidate filtering.** :func:`filter_candidates` keeps only the remote candidates a loopback-only peer
  may reach (so no connectivity check, and no mDNS lookup, ever leaves 127.0.0.1), and a connection
  gathered only on loopback ignores checks from other addresses (no peer-reflexive pair off loopback).
* **Audio jitter buffer.** aiortc's audio receiver holds 4 packets (80 ms) before decoding, then decodes
  on a thread of its own. :func:`tune_audio_receiver` installs :class:`InlineAudioDecoder` (each packet
  decoded on arrival, on the loop) or aiortc's own buffer with a chosen prefetch.
* **Video frames on their last packet.** aiortc's video jitter buffer hands a frame to the decoder only
  when the *next* frame's first packet arrives, one frame period late. :class:`MarkerJitterBuffer`
  (installed by :func:`tune_video_receivers`, used by the Python client) also releases a frame as soon
  as its last packet (RTP marker bit) completes it, as browsers do.
* **Key frame requests for pre-encoded video.** aiortc answers a receiver's RTCP PLI/FIR by setting a
  flag that only its own encoder reads; a track that hands over finished packets (a shared stream's
  viewers) gets nothing. :func:`route_keyframe_requests` sends those requests to a callback instead.
  :func:`force_keyframe` asks a sender's own encoder for one (a client's ``request_keyframe``).
* :func:`negotiated_codec` reads the codec an answer chose for a transceiver, and :func:`selected_pair`
  the nominated ICE candidate pair (aiortc exposes neither).

Every use of aiortc's private attributes by the server and the Python client is in this module, so an
aiortc upgrade is checked here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import aioice.ice
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

log = logging.getLogger(__name__)

_HOST_ADDRESSES: ContextVar[tuple[str, ...] | None] = ContextVar("causalcast_host_addresses", default=None)
_ORIGINAL_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses
_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_CODECS_ATTR = "_RTCRtpReceiver__codecs"


_process_default: tuple[str, ...] | None = None


def set_process_host_addresses(addresses: Iterable[str] | None) -> None:
    """Default for gathering outside :func:`gathering_from` (for a server whose code we do not call into)."""
    global _process_default
    _process_default = tuple(addresses) if addresses is not None else None


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _HOST_ADDRESSES.get() or _process_default
    if chosen is None:
        return _ORIGINAL_GET_HOST_ADDRESSES(use_ipv4, use_ipv6)
    return [a for a in chosen if (use_ipv6 if ":" in a else use_ipv4)]


aioice.ice.get_host_addresses = _get_host_addresses


_ORIGINAL_REQUEST_RECEIVED = aioice.ice.Connection.request_received


def _request_received(self: aioice.ice.Connection, message: Any, addr: tuple[str, int], protocol: Any) -> None:
    # A connection gathered only on loopback answers only loopback peers. Without this a browser's check
    # sent from another local interface (e.g. eth0's address) becomes a peer-reflexive pair, and media
    # would flow over a non-loopback address.
    candidates = self.local_candidates
    if candidates and all(is_loopback(c.host) for c in candidates) and not is_loopback(addr[0]):
        return
    _ORIGINAL_REQUEST_RECEIVED(self, message, addr, protocol)


aioice.ice.Connection.request_received = _request_received


@contextlib.contextmanager
def gathering_from(addresses: Iterable[str] | None) -> Iterator[None]:
    """Within the block, ICE gathering uses exactly ``addresses`` for host candidates (None: aioice's)."""
    token = _HOST_ADDRESSES.set(tuple(addresses) if addresses is not None else None)
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def filter_candidates(sdp: str, *, loopback_only: bool) -> str:
    """Drop ``a=candidate`` lines a loopback-only peer must not use (other addresses, mDNS names)."""
    if not loopback_only:
        return sdp
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 8 or not is_loopback(fields[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


def has_loopback_candidate(sdp: str) -> bool:
    """True when some ``a=candidate`` line is on a loopback address."""
    for line in sdp.splitlines():
        fields = line.split()
        if line.startswith("a=candidate:") and len(fields) >= 8 and is_loopback(fields[4]):
            return True
    return False


def count_candidates(sdp: str) -> int:
    """Number of ``a=candidate`` lines."""
    return sum(1 for line in sdp.splitlines() if line.startswith("a=candidate:"))


T = TypeVar("T")


class PacedTrack(MediaStreamTrack):
    """An outgoing track fed by a pacer (``next_*`` coroutines and ``close``).

    It ends when the pacer has nothing more to give, and stopping it closes the pacer.
    """

    def __init__(self, pacer: Any) -> None:
        super().__init__()
        self.pacer = pacer

    async def _take(self, next_item: Callable[[], Awaitable[T | None]]) -> T:
        """The pacer's next item at its slot; ends the track (MediaStreamError) when there is none."""
        if self.readyState != "live":
            raise MediaStreamError
        item = await next_item()
        if item is None:
            self.stop()
            raise MediaStreamError
        return item

    def stop(self) -> None:
        """End the track (and the pacer feeding it)."""
        self.pacer.close()
        super().stop()


class InlineAudioDecoder:
    """Stands in for an audio receiver's jitter buffer: decodes each packet on arrival, on the event loop.

    Opus (and G.711) put a whole frame in one packet, so nothing needs reassembly, and holding packets only
    buys reordering tolerance that loopback and good networks do not need. Decoding a 20 ms packet takes
    well under a millisecond, far less than aiortc's hop through a decoder thread and back (under load
    that hop costs milliseconds of GIL hand-offs per packet). Decoded frames go straight into the
    receiver's track queue, so ``track.recv()`` works as before. A late or duplicate packet is dropped
    (the session's pts gap-filling covers it).
    """

    capacity = 16

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._receiver = receiver
        self._codecs: dict[int, Any] = getattr(receiver, _CODECS_ATTR)
        self._decoders: dict[int, Any] = {}
        self._last_seq: int | None = None
        self._ts_origin: int | None = None
        self._ts_last = 0
        self.num_dropped = 0
        self.num_errors = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Decode a packet into the track's queue; never hands anything to aiortc's decoder thread."""
        seq = packet.sequence_number
        if self._last_seq is not None:
            delta = uint16_add(seq, -self._last_seq)
            if delta == 0 or delta >= 0x8000:  # duplicate or older than what was released
                self.num_dropped += 1
                return False, None
        self._last_seq = seq
        track = self._receiver.track
        codec = self._codecs.get(packet.payload_type)
        if track is None or codec is None:
            return False, None
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None:
            decoder = self._decoders[packet.payload_type] = get_decoder(codec)
        frame = JitterFrame(data=packet._data, timestamp=self._map(packet.timestamp))  # type: ignore[attr-defined]
        try:
            decoded = decoder.decode(frame)
        except av.FFmpegError:
            self.num_errors += 1
            return False, None
        for f in decoded:
            track._queue.put_nowait(f)
        return False, None

    def _map(self, timestamp: int) -> int:
        """RTP timestamp relative to the first one, unwrapped (as aiortc's receiver maps them)."""
        if self._ts_origin is None:
            self._ts_origin = timestamp
        elif timestamp < self._ts_last and self._ts_last - timestamp > 1 << 31:
            self._ts_origin -= 1 << 32
        self._ts_last = timestamp
        return timestamp - self._ts_origin

    def remove(self, count: int) -> None:
        """Nothing is held."""


def tune_audio_receiver(receiver: RTCRtpReceiver, prefetch: int = 0) -> None:
    """Replace an audio receiver's jitter buffer: prefetch 0 decodes each packet on arrival."""
    if not hasattr(receiver, _JITTER_ATTR) or not hasattr(receiver, _CODECS_ATTR):
        raise RuntimeError("this aiortc version has no RTCRtpReceiver jitter buffer to tune")
    buffer: Any = InlineAudioDecoder(receiver) if prefetch <= 0 else JitterBuffer(capacity=16, prefetch=prefetch)
    setattr(receiver, _JITTER_ATTR, buffer)


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, releasing a frame when its marker packet arrives (not one frame later).

    The RTP marker bit is set on the last packet of a video frame. When it arrives and every packet from
    the buffer's origin up to it is present and carries the same timestamp, the frame is complete: it is
    released and its packets removed, so aiortc's own logic (which releases a frame once the next one
    starts) never sees it again. Anything else (a gap, a frame split by loss) is left to aiortc's logic.
    """

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Store a packet; returns ``(pli_needed, frame or None)`` like :class:`JitterBuffer`."""
        pli, frame = super().add(packet)
        if frame is None and packet.marker and self._origin is not None:
            frame = self._complete_frame(packet.sequence_number)
        return pli, frame

    def _complete_frame(self, last_seq: int) -> JitterFrame | None:
        count = uint16_add(last_seq, -self._origin) + 1
        if count > self.capacity:
            return None
        packets = [self._packets[(self._origin + i) % self.capacity] for i in range(count)]
        if any(p is None for p in packets) or len({p.timestamp for p in packets}) != 1:
            return None
        frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=packets[0].timestamp)  # type: ignore[attr-defined]
        self.remove(count)
        return frame


def tune_video_receivers(pc: RTCPeerConnection) -> None:
    """Give every video receiver of a peer connection a :class:`MarkerJitterBuffer`."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "video":
            if not hasattr(transceiver.receiver, _JITTER_ATTR):
                raise RuntimeError("this aiortc version has no RTCRtpReceiver jitter buffer to tune")
            setattr(transceiver.receiver, _JITTER_ATTR, MarkerJitterBuffer(capacity=512, is_video=True))


def tune_audio_receivers(pc: RTCPeerConnection, prefetch: int = 0) -> None:
    """Tune every audio receiver of a peer connection."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio":
            tune_audio_receiver(transceiver.receiver, prefetch)


def route_keyframe_requests(sender: RTCRtpSender, request_keyframe: Callable[[], None]) -> None:
    """Make a sender's incoming RTCP PLI/FIR (and ``_send_keyframe`` calls) call ``request_keyframe``.

    aiortc's ``RTCRtpSender._handle_rtcp_packet`` calls ``self._send_keyframe()`` for PLI and FIR; an
    instance attribute of that name takes precedence over the method, for this sender only.
    """
    if not callable(getattr(sender, "_send_keyframe", None)):
        raise RuntimeError("this aiortc version has no RTCRtpSender._send_keyframe to route")
    sender._send_keyframe = request_keyframe  # type: ignore[method-assign]


def force_keyframe(sender: RTCRtpSender) -> None:
    """Make the sender's encoder produce a key frame next (what aiortc does for an RTCP PLI)."""
    sender._send_keyframe()


def negotiated_codec(transceiver: RTCRtpTransceiver) -> str | None:
    """Lower-case name of the codec the answer chose for a transceiver (its preferred one), or None."""
    codecs = transceiver._codecs  # what negotiation kept, preferred first
    return codecs[0].name.lower() if codecs else None


def selected_pair(pc: RTCPeerConnection) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """``((local host, port), (remote host, port))`` of the nominated ICE pair, or None before one exists."""
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        if transport is None:
            continue
        pair = transport.transport._connection._nominated.get(1)
        if pair is not None:
            return pair.local_addr, pair.remote_addr
    sctp = pc.sctp
    if sctp is not None:
        pair = sctp.transport.transport._connection._nominated.get(1)
        if pair is not None:
            return pair.local_addr, pair.remote_addr
    return None


def mono_samples(frame: av.AudioFrame) -> np.ndarray:
    """First channel of a decoded audio frame as float32 in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    mono = data[0] if frame.format.is_planar else data.reshape(-1, channels)[:, 0]
    return mono.astype(np.float32) / (32768.0 if mono.dtype == np.int16 else 1.0)


def stereo_s16_frame(pcm: np.ndarray, sample_rate_hz: int) -> av.AudioFrame:
    """Mono int16 samples as a packed stereo s16 frame: what aiortc's Opus encoder takes unconverted.

    Handing it mono makes FFmpeg upmix at -3 dB, halving the level over a round trip.
    """
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None, :], format="s16", layout="stereo")
    frame.sample_rate = sample_rate_hz
    return frame


async def close_failed(pc: RTCPeerConnection) -> None:
    """Close a peer connection whose offer failed; a malformed offer can leave aiortc unable to close cleanly.

    (aiortc's ``close`` stops every transceiver's transport, and a section it never gave one raises.) The
    failure being reported is the offer's; the half-built connection is dropped either way.
    """
    try:
        await pc.close()
    except Exception as e:
        log.debug("closing a failed peer connection raised %s: %s", type(e).__name__, e)


def has_transports(pc: RTCPeerConnection) -> bool:
    """Whether every media section of the applied offer got a transport.

    A malformed offer (a BUNDLE group that does not match its sections) can leave one without; aiortc's
    connect task, scheduled by ``setRemoteDescription``, would then fail in the background. Checked right
    after applying the offer (before anything awaits), a refusal closes the connection before that task runs.
    """
    return all(t.receiver.transport is not None for t in pc.getTransceivers())
