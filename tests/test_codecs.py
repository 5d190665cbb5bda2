"""The wire codecs (streaming/media/codecs.py): what goes in comes out, on the right clock, with the right flags."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.media.codecs import OPUS_FRAME_SAMPLES, AudioDecoder, AudioEncoder, VideoDecoder, VideoEncoder
from streaming.protocol import FLAG_DISCONTINUITY, FLAG_KEY, AudioCodec, VideoCodec

from streaming_helpers import dominant_hz, tone


def test_pcm16_is_one_packet_per_chunk_and_exact_to_a_quantum() -> None:
    encoder, decoder = AudioEncoder(AudioCodec.PCM16, 16_000), AudioDecoder(AudioCodec.PCM16)
    assert encoder.clock_hz == 16_000
    x = tone(440, 0.02)
    (packet,) = encoder.encode(x, 0)
    assert packet.pts == 0 and packet.flags == FLAG_KEY
    np.testing.assert_allclose(decoder.decode(packet.payload), x, atol=1 / 32768 + 1e-6)
    (clipped,) = encoder.encode(np.array([2.0, -2.0, np.nan], np.float32), 320)
    assert decoder.decode(clipped.payload).tolist() == pytest.approx([32767 / 32768, -32767 / 32768, 0.0])


def test_opus_makes_20_ms_packets_at_48_khz_and_keeps_the_tone() -> None:
    encoder, decoder = AudioEncoder(AudioCodec.OPUS, 16_000), AudioDecoder(AudioCodec.OPUS)
    assert encoder.clock_hz == 48_000
    x = tone(440, 1.0)
    packets = [p for i in range(0, len(x), 320) for p in encoder.encode(x[i : i + 320], i)]
    assert len(packets) == 50  # one 20 ms packet per 20 ms chunk: nothing held back
    assert [p.pts for p in packets] == [k * OPUS_FRAME_SAMPLES for k in range(50)]
    assert all(p.flags & FLAG_KEY for p in packets)
    y = np.concatenate([decoder.decode(p.payload) for p in packets])
    assert len(y) == 48_000
    assert dominant_hz(y[9600:], 48_000) == pytest.approx(440, abs=5)
    assert 0.5 < y[9600:].std() / x.std() < 1.5


def test_a_pts_jump_is_marked_as_a_discontinuity_and_reanchors_opus() -> None:
    for codec in (AudioCodec.PCM16, AudioCodec.OPUS):
        encoder = AudioEncoder(codec, 16_000)
        first = [p for i in range(3) for p in encoder.encode(np.zeros(320, np.float32), i * 320)]
        assert not any(p.flags & FLAG_DISCONTINUITY for p in first)
        resumed = encoder.encode(np.zeros(320, np.float32), 16_000)  # 1 s of silence skipped
        assert resumed and resumed[0].flags & FLAG_DISCONTINUITY
        assert all(not p.flags & FLAG_DISCONTINUITY for p in resumed[1:])
        if codec is AudioCodec.OPUS:
            assert resumed[0].pts == 48_000  # on the new timeline, not after the old packets


@pytest.mark.parametrize("codec", [VideoCodec.VP8, VideoCodec.H264, VideoCodec.JPEG])
def test_video_round_trip_keeps_the_picture_and_the_90_khz_pts(codec: VideoCodec) -> None:
    width, height, fps = 64, 48, 25.0
    encoder, decoder = VideoEncoder(codec, width, height, fps), VideoDecoder(codec)
    frames = np.zeros((6, height, width, 3), np.uint8)
    for k in range(6):
        frames[k, :, : (k + 1) * 8] = (200, 60, 30)  # a bar growing frame by frame
    pts = [k * 3600 for k in range(6)]
    packets = encoder.encode(frames, pts)
    assert [p.pts for p in packets] == pts  # no B-frames, no delay: one packet per frame, in order
    assert packets[0].flags & FLAG_KEY
    decoded = [f for p in packets for f in decoder.decode(p.payload)]
    assert len(decoded) == 6 and decoded[0].shape == (height, width, 3)
    for original, back in zip(frames, decoded, strict=True):
        assert np.abs(original.astype(int) - back.astype(int)).mean() < 12


@pytest.mark.parametrize("codec", [VideoCodec.VP8, VideoCodec.H264])
def test_request_keyframe_makes_the_next_frame_a_key_frame(codec: VideoCodec) -> None:
    encoder = VideoEncoder(codec, 64, 48, 25.0)
    frames = np.full((4, 48, 64, 3), 90, np.uint8)
    first = encoder.encode(frames, [0, 3600, 7200, 10800])
    assert [bool(p.flags & FLAG_KEY) for p in first] == [True, False, False, False]
    encoder.request_keyframe()
    again = encoder.encode(frames[:2], [14400, 18000])
    assert [bool(p.flags & FLAG_KEY) for p in again] == [True, False]
