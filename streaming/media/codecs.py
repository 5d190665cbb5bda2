"""Audio and video codecs for the wire, on PyAV (FFmpeg): encoders for the server, decoders for clients.

Encoders keep their own pts continuity: the caller passes the pts of each chunk (in the model's clock),
and a jump (e.g. speech resuming after silence) is marked as a discontinuity rather than smeared.
Opus always runs at 48 kHz in 20 ms packets (what WebCodecs and WebRTC expect); video uses a 90 kHz clock.
"""

from __future__ import annotations

import fractions
from dataclasses import dataclass

import av
import numpy as np

from streaming.media.audio import float_to_pcm16
from streaming.media.resample import CausalResampler
from streaming.protocol import FLAG_DISCONTINUITY, FLAG_KEY, VIDEO_CLOCK_HZ, AudioCodec, VideoCodec

OPUS_RATE_HZ = 48_000
OPUS_FRAME_SAMPLES = 960  # 20 ms at 48 kHz


@dataclass(frozen=True)
class Packet:
    """One encoded unit ready for the wire."""

    payload: bytes
    pts: int  # in the stream clock (see `clock_hz` of the encoder)
    flags: int = 0


class AudioEncoder:
    """Float32 chunks at the model rate -> PCM16 packets (one per chunk) or 20 ms Opus packets."""

    def __init__(self, codec: AudioCodec, sample_rate_hz: int, bitrate_bps: int = 32_000) -> None:
        self.codec = codec
        self.sample_rate_hz = sample_rate_hz
        self.clock_hz = OPUS_RATE_HZ if codec is AudioCodec.OPUS else sample_rate_hz
        self._expected_pts: int | None = None  # model-rate pts the next chunk should have
        if codec is AudioCodec.OPUS:
            # Causal: each chunk yields all of its 48 kHz samples at once (FFmpeg's resampler would hold back
            # half a filter per call, and so every Opus packet until the next chunk arrived).
            self._resampler = CausalResampler(sample_rate_hz, OPUS_RATE_HZ) if sample_rate_hz != OPUS_RATE_HZ else None
            self._fifo = av.AudioFifo()
            self._ctx = av.CodecContext.create("libopus", "w")
            self._ctx.sample_rate = OPUS_RATE_HZ
            self._ctx.layout = "mono"
            self._ctx.format = "s16"
            self._ctx.bit_rate = bitrate_bps
            self._ctx.time_base = fractions.Fraction(1, OPUS_RATE_HZ)
            # lowdelay drops the speech-model lookahead: ~5 ms less algorithmic delay per packet.
            self._ctx.options = {"application": "lowdelay", "frame_duration": "20"}
            self._ctx.open()
            self._next_opus_pts: int | None = None  # 48 kHz pts of the next Opus packet

    def encode(self, samples: np.ndarray, pts: int) -> list[Packet]:
        """Encode one chunk whose first sample has model-rate pts ``pts``."""
        flags = FLAG_DISCONTINUITY if self._expected_pts is not None and pts != self._expected_pts else 0
        self._expected_pts = pts + len(samples)
        pcm = float_to_pcm16(samples)
        if self.codec is AudioCodec.PCM16:
            return [Packet(pcm.tobytes(), pts, flags | FLAG_KEY)]
        return self._encode_opus(pcm, pts, flags)

    def _encode_opus(self, pcm: np.ndarray, pts: int, flags: int) -> list[Packet]:
        pts48 = pts * OPUS_RATE_HZ // self.sample_rate_hz
        if flags & FLAG_DISCONTINUITY or self._next_opus_pts is None:
            # Re-anchor: samples still waiting in the fifo play just before this chunk.
            self._next_opus_pts = max(0, pts48 - self._fifo.samples)
        if self._resampler is not None:
            pcm = float_to_pcm16(self._resampler.process(pcm.astype(np.float32) / 32767.0))
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE_HZ
        self._fifo.write(frame)
        packets: list[Packet] = []
        while self._fifo.samples >= OPUS_FRAME_SAMPLES:
            f = self._fifo.read(OPUS_FRAME_SAMPLES)
            f.pts = self._next_opus_pts
            for p in self._ctx.encode(f):
                packets.append(Packet(bytes(p), self._next_opus_pts, FLAG_KEY | flags))
                flags = 0
            self._next_opus_pts += OPUS_FRAME_SAMPLES
        return packets


class AudioDecoder:
    """Wire audio packets -> float32 mono samples (at 48 kHz for Opus, the stream rate for PCM16)."""

    def __init__(self, codec: AudioCodec) -> None:
        self.codec = codec
        if codec is AudioCodec.OPUS:
            self._ctx = av.CodecContext.create("libopus", "r")
            self._ctx.sample_rate = OPUS_RATE_HZ
            self._ctx.layout = "mono"

    def decode(self, payload: bytes) -> np.ndarray:
        """Decode one packet."""
        if self.codec is AudioCodec.PCM16:
            return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
        parts = [f.to_ndarray().reshape(-1) for f in self._ctx.decode(av.Packet(payload))]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        pcm = np.concatenate(parts)
        return pcm.astype(np.float32) / (32768.0 if pcm.dtype == np.int16 else 1.0)


_VIDEO_ENCODERS = {
    VideoCodec.VP8: ("libvpx", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}),
    VideoCodec.H264: (
        "libx264",
        "yuv420p",
        {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline", "bframes": "0"},
    ),
    VideoCodec.JPEG: ("mjpeg", "yuvj420p", {}),
}
_VIDEO_DECODERS = {VideoCodec.VP8: "vp8", VideoCodec.H264: "h264", VideoCodec.JPEG: "mjpeg"}


class VideoEncoder:
    """RGB frames -> VP8 / H.264 (Annex B, baseline, no B-frames) / JPEG packets on a 90 kHz clock."""

    def __init__(self, codec: VideoCodec, width: int, height: int, fps: float, bitrate_bps: int = 800_000) -> None:
        name, pix_fmt, options = _VIDEO_ENCODERS[codec]
        self.codec = codec
        self.clock_hz = VIDEO_CLOCK_HZ
        self._ctx = av.CodecContext.create(name, "w")
        self._ctx.width, self._ctx.height = width, height
        self._ctx.pix_fmt = pix_fmt
        self._ctx.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        self._ctx.framerate = fractions.Fraction(fps).limit_denominator(1001)
        self._ctx.bit_rate = bitrate_bps
        self._ctx.gop_size = max(1, round(fps * 2))  # a key frame every 2 s for late joiners
        self._ctx.options = dict(options)
        # One thread per encoder: sessions already run in parallel on the codec pool, and libvpx's own
        # threads made a 256x192 VP8 frame cost ~100 ms instead of ~1.5 ms on a busy 2-core machine.
        self._ctx.thread_count = 1
        if codec is VideoCodec.JPEG:
            self._ctx.qmin, self._ctx.qmax = 2, 8
        self._ctx.open()
        self._pix_fmt = pix_fmt
        self._force_key = True
        self._last_pts: int | None = None

    def request_keyframe(self) -> None:
        """Make the next frame a key frame (a viewer joined or lost packets)."""
        self._force_key = True

    def encode(self, frames: np.ndarray, pts: list[int]) -> list[Packet]:
        """Encode frames (F, H, W, 3) uint8 with their 90 kHz pts."""
        packets: list[Packet] = []
        for rgb, frame_pts in zip(frames, pts, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=self._pix_fmt)
            frame.pts = frame_pts
            if self._force_key:
                frame.pict_type = av.video.frame.PictureType.I
                self._force_key = False
            for p in self._ctx.encode(frame):
                key = self.codec is VideoCodec.JPEG or p.is_keyframe
                packets.append(Packet(bytes(p), int(p.pts if p.pts is not None else frame_pts), FLAG_KEY if key else 0))
        return packets


class VideoDecoder:
    """Wire video packets -> RGB frames (H, W, 3) uint8."""

    def __init__(self, codec: VideoCodec) -> None:
        self._ctx = av.CodecContext.create(_VIDEO_DECODERS[codec], "r")

    def decode(self, payload: bytes) -> list[np.ndarray]:
        """Decode one packet into zero or more frames."""
        return [f.to_ndarray(format="rgb24") for f in self._ctx.decode(av.Packet(payload))]
