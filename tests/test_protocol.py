"""Wire format: header round trip, validation of control messages."""

import pytest

from models.errors import ProtocolError
from streaming.protocol import (
    HEADER_BYTES,
    AudioCodec,
    MediaKind,
    VideoCodec,
    pack_media,
    parse_control,
    parse_start,
    unpack_media,
)


def test_header_round_trip():
    data = pack_media(MediaKind.VIDEO, VideoCodec.H264, 1, 2**32 + 5, 2**40, b"payload", flags=1)
    assert len(data) == HEADER_BYTES + 7
    frame = unpack_media(data)
    assert (frame.kind, frame.codec, frame.stream, frame.seq, frame.pts, frame.payload) == (
        MediaKind.VIDEO,
        VideoCodec.H264,
        1,
        5,
        2**40,
        b"payload",
    )
    assert frame.is_key


@pytest.mark.parametrize("data", [b"", b"\x01" * 15, b"\x03" + b"\x00" * 15, b"\x01\x07" + b"\x00" * 14])
def test_bad_headers_are_rejected(data):
    with pytest.raises(ProtocolError) as e:
        unpack_media(data)
    assert e.value.code == "bad_frame"


def test_start_defaults_and_validation():
    req = parse_start({"type": "start", "model": "pitch"})
    assert req.audio_codec is AudioCodec.OPUS and req.video_codec is VideoCodec.VP8 and req.input_sample_rate_hz is None
    req = parse_start(
        {
            "type": "start",
            "model": "pitch",
            "input": {"sample_rate_hz": 48000},
            "output": {"audio": "pcm16", "video": "jpeg"},
        }
    )
    assert (req.input_sample_rate_hz, req.audio_codec, req.video_codec) == (48000, AudioCodec.PCM16, VideoCodec.JPEG)
    for bad in (
        {"type": "start"},
        {"type": "start", "model": "x", "params": []},
        {"type": "start", "model": "x", "output": {"audio": "mp3"}},
        {"type": "start", "model": "x", "input": {"sample_rate_hz": 7}},
    ):
        with pytest.raises(ProtocolError):
            parse_start(bad)


def test_control_parsing():
    assert parse_control('{"type": "ping", "t": 1}') == {"type": "ping", "t": 1}
    for bad in ("nope", "3", '{"type": 3}', '{"type": ""}'):
        with pytest.raises(ProtocolError):
            parse_control(bad)
