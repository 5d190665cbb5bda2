"""Session output -> protocol frames (streaming/media/wire.py): declared streams, numbering, pts and key flags."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.base import AudioFormat, Pacing, StreamSpec, VideoFormat
from streaming.client import MediaCollector
from streaming.media.wire import AUDIO_STREAM, VIDEO_STREAM, WireEncoder
from streaming.protocol import AudioCodec, MediaKind, VideoCodec, unpack_media
from streaming.session import OutputChunk

from streaming_helpers import tone

SPEC = StreamSpec(chunk_ms=80, pacing=Pacing.CLOCK, output_audio=AudioFormat(16_000),
                  output_video=VideoFormat(64, 48, 25.0))


def _chunk(k: int) -> OutputChunk:
    video = np.zeros((2, 48, 64, 3), np.uint8)
    video[:, :, : 8 * (k + 1)] = 255
    return OutputChunk(k, tone(440, 0.08), k * 1280, video, [(2 * k + i) * 3600 for i in range(2)], False)


def test_streams_are_declared_for_the_chosen_codecs() -> None:
    streams = WireEncoder(SPEC, AudioCodec.OPUS, VideoCodec.H264).streams()
    assert streams == [
        {"id": AUDIO_STREAM, "kind": "audio", "codec": "opus", "clock_hz": 48_000, "sample_rate_hz": 48_000,
         "channels": 1},
        {"id": VIDEO_STREAM, "kind": "video", "codec": "h264", "clock_hz": 90_000, "width": 64, "height": 48,
         "fps": 25.0},
    ]
    audio_only = StreamSpec(chunk_ms=20, pacing=Pacing.CLOCK, output_audio=AudioFormat(24_000))
    assert [s["sample_rate_hz"] for s in WireEncoder(audio_only, AudioCodec.PCM16, VideoCodec.VP8).streams()] == [
        24_000
    ]


@pytest.mark.parametrize(("audio", "video"), [(AudioCodec.PCM16, VideoCodec.JPEG), (AudioCodec.OPUS, VideoCodec.VP8)])
async def test_chunks_become_numbered_frames_a_client_decodes(audio: AudioCodec, video: VideoCodec) -> None:
    encoder = WireEncoder(SPEC, audio, video)
    collector = MediaCollector({"streams": encoder.streams()})
    frames = []
    with ThreadPoolExecutor(1) as pool:
        for k in range(3):
            frames += await encoder.encode(_chunk(k), pool)
    parsed = [unpack_media(f.data) for f in frames]
    for frame, wire in zip(parsed, frames, strict=True):
        assert wire.kind is frame.kind and wire.key == frame.is_key
        collector.add(frame)
    audio_frames = [f for f in parsed if f.kind is MediaKind.AUDIO]
    video_frames = [f for f in parsed if f.kind is MediaKind.VIDEO]
    # each stream numbered on its own, from 0, without gaps
    assert [f.seq for f in audio_frames] == list(range(len(audio_frames)))
    assert [f.seq for f in video_frames] == list(range(6))
    assert [f.pts for f in video_frames] == [i * 3600 for i in range(6)] and video_frames[0].is_key
    assert {f.stream for f in audio_frames} == {AUDIO_STREAM} and {f.stream for f in video_frames} == {VIDEO_STREAM}
    assert len(collector.video[VIDEO_STREAM]) == 6
    assert collector.video[VIDEO_STREAM][-1][:, :20].mean() > 200  # the last chunk's bar, decoded
    assert len(collector.audio_samples(AUDIO_STREAM)) == (3 * 1280 if audio is AudioCodec.PCM16 else 12 * 960)


async def test_request_keyframe_reaches_the_video_encoder() -> None:
    encoder = WireEncoder(SPEC, AudioCodec.PCM16, VideoCodec.VP8)
    with ThreadPoolExecutor(1) as pool:
        first = [f for f in await encoder.encode(_chunk(0), pool) if f.kind is MediaKind.VIDEO]
        encoder.request_keyframe()
        second = [f for f in await encoder.encode(_chunk(1), pool) if f.kind is MediaKind.VIDEO]
        third = [f for f in await encoder.encode(_chunk(2), pool) if f.kind is MediaKind.VIDEO]
    assert [f.key for f in first + second + third] == [True, False, True, False, False, False]
