"""Session output -> protocol media frames for one (audio codec, video codec) choice.

Shared by the WebSocket sender of a session and by the broadcast that fans a shared session out to
viewers, so a chunk is encoded once per codec choice however many clients receive it. Video encoding runs
on the codec thread pool (never on the event loop); audio encoding is ~0.2 ms per 20 ms packet, cheaper
inline than a thread hop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from models.base import StreamSpec
from streaming.media.codecs import AudioEncoder, VideoEncoder
from streaming.protocol import FLAG_KEY, AudioCodec, MediaKind, VideoCodec, pack_media

AUDIO_STREAM = 0
VIDEO_STREAM = 1


@dataclass(frozen=True)
class WireFrame:
    """One binary protocol frame, with what a fan-out needs to know without parsing it."""

    data: bytes
    kind: MediaKind
    key: bool


class WireEncoder:
    """Encodes :class:`~streaming.session.OutputChunk` s into numbered protocol frames."""

    def __init__(self, spec: StreamSpec, audio_codec: AudioCodec, video_codec: VideoCodec) -> None:
        self.spec = spec
        self.audio = AudioEncoder(audio_codec, spec.output_audio.sample_rate_hz) if spec.output_audio else None
        video = spec.output_video
        self.video = VideoEncoder(video_codec, video.width, video.height, video.fps) if video else None
        self._seq = {AUDIO_STREAM: 0, VIDEO_STREAM: 0}

    def streams(self) -> list[dict[str, Any]]:
        """Stream declarations for the `ready` (or `watching`) message."""
        out: list[dict[str, Any]] = []
        if self.audio:
            rate = self.audio.clock_hz
            out.append({"id": AUDIO_STREAM, "kind": "audio", "codec": self.audio.codec.name.lower(),
                        "clock_hz": rate, "sample_rate_hz": rate, "channels": 1})
        if self.video:
            v = self.spec.output_video
            out.append({"id": VIDEO_STREAM, "kind": "video", "codec": self.video.codec.name.lower(),
                        "clock_hz": self.video.clock_hz, "width": v.width, "height": v.height, "fps": v.fps})
        return out

    def request_keyframe(self) -> None:
        """Make the next video frame a key frame."""
        if self.video is not None:
            self.video.request_keyframe()

    async def encode(self, chunk: Any, codec_pool: Executor) -> list[WireFrame]:
        """Encode one output chunk (audio first, then its video frames)."""
        frames: list[WireFrame] = []
        if self.audio is not None and chunk.audio is not None:
            for p in self.audio.encode(chunk.audio, chunk.audio_pts):
                frames.append(self._frame(MediaKind.AUDIO, self.audio.codec, AUDIO_STREAM, p.pts, p.payload, p.flags))
        if self.video is not None and chunk.video is not None:
            loop = asyncio.get_running_loop()
            packets = await loop.run_in_executor(codec_pool, self.video.encode, chunk.video, chunk.video_pts)
            for p in packets:
                frames.append(self._frame(MediaKind.VIDEO, self.video.codec, VIDEO_STREAM, p.pts, p.payload, p.flags))
        return frames

    def _frame(self, kind: MediaKind, codec: int, stream: int, pts: int, payload: bytes, flags: int) -> WireFrame:
        seq = self._seq[stream]
        self._seq[stream] = seq + 1
        return WireFrame(pack_media(kind, codec, stream, seq, pts, payload, flags), kind, bool(flags & FLAG_KEY))
