"""The causalcast wire protocol, version 1 (documented in docs/protocol.md).

Control messages are JSON objects in text frames with a ``type`` field. Media travels in binary frames
that start with a fixed 16-byte header:

    offset size field
    0      1    kind    1 = audio, 2 = video
    1      1    codec   audio: 1 = pcm16, 2 = opus; video: 1 = vp8, 2 = h264, 3 = jpeg
    2      1    stream  stream id (0 = main; declared in `ready`)
    3      1    flags   bit 0 = key frame, bit 1 = discontinuity (pts jumped; e.g. resumed after idle)
    4      4    seq     per-stream sequence number, big-endian uint32, wraps
    8      8    pts     presentation time in the stream's clock (audio: samples at its rate;
                        video: 90 kHz ticks), big-endian uint64

This module is pure: no sockets, no asyncio; both the server and :mod:`streaming.client` use it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from models.errors import ProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!BBBBIQ")
HEADER_BYTES = HEADER.size  # 16
VIDEO_CLOCK_HZ = 90_000

FLAG_KEY = 0x01
FLAG_DISCONTINUITY = 0x02


class MediaKind(IntEnum):
    """First header byte."""

    AUDIO = 1
    VIDEO = 2


class AudioCodec(IntEnum):
    """Audio codecs on the wire."""

    PCM16 = 1
    OPUS = 2


class VideoCodec(IntEnum):
    """Video codecs on the wire."""

    VP8 = 1
    H264 = 2
    JPEG = 3


AUDIO_CODECS = {c.name.lower(): c for c in AudioCodec}
VIDEO_CODECS = {c.name.lower(): c for c in VideoCodec}


@dataclass(frozen=True)
class MediaFrame:
    """One binary frame: header fields plus payload."""

    kind: MediaKind
    codec: int
    stream: int
    flags: int
    seq: int
    pts: int
    payload: bytes

    @property
    def is_key(self) -> bool:
        """True for a key frame (decodable on its own)."""
        return bool(self.flags & FLAG_KEY)


def pack_media(kind: MediaKind, codec: int, stream: int, seq: int, pts: int, payload: bytes, flags: int = 0) -> bytes:
    """Serialize a media frame."""
    return HEADER.pack(int(kind), int(codec), stream, flags, seq & 0xFFFFFFFF, pts) + payload


def unpack_media(data: bytes) -> MediaFrame:
    """Parse a media frame; raises :class:`ProtocolError` (code ``bad_frame``) on a bad header."""
    if len(data) < HEADER_BYTES:
        raise ProtocolError(
            f"binary frame of {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header", "bad_frame"
        )
    kind, codec, stream, flags, seq, pts = HEADER.unpack_from(data)
    try:
        media_kind = MediaKind(kind)
    except ValueError:
        raise ProtocolError(f"unknown media kind {kind} (1 = audio, 2 = video)", "bad_frame") from None
    valid = AudioCodec if media_kind is MediaKind.AUDIO else VideoCodec
    if codec not in {c.value for c in valid}:
        raise ProtocolError(f"unknown {media_kind.name.lower()} codec {codec}", "bad_frame")
    return MediaFrame(media_kind, codec, stream, flags, seq, pts, bytes(data[HEADER_BYTES:]))


# -- control messages ------------------------------------------------------------------------------

# Message types the transport itself handles; every other type must be one the session's model declares.
CLIENT_TYPES = frozenset({"start", "watch", "stop", "ping", "request_keyframe"})
SUPPORTED_INPUT_RATES_HZ = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def load_json(text: str | bytes, what: str = "control message", code: str = "bad_message") -> Any:
    """``json.loads`` for client data: every failure is a :class:`ProtocolError`, never another exception.

    Deeply nested input (``[[[[...`` a thousand levels) makes the parser raise ``RecursionError``; it is
    reported like any other malformed message.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{what} is not valid JSON: {e.msg}", code) from e
    except UnicodeDecodeError as e:
        raise ProtocolError(f"{what} is not valid UTF-8: {e.reason}", code) from e
    except RecursionError:
        raise ProtocolError(f"{what} is nested too deeply", code) from None


def parse_control(text: str) -> dict[str, Any]:
    """Parse a text frame into a control message dict with a string ``type``."""
    message = load_json(text)
    if not isinstance(message, dict):
        raise ProtocolError("control message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("control message needs a string 'type'")
    return message


@dataclass(frozen=True)
class StartRequest:
    """A validated `start` message."""

    model: str
    params: dict[str, Any]
    input_sample_rate_hz: int | None
    audio_codec: AudioCodec
    video_codec: VideoCodec
    share: bool = False  # viewers may `watch` this session's output


def parse_start(message: dict[str, Any]) -> StartRequest:
    """Validate a `start` message (the model name is checked by the server, which knows the models)."""
    version = message.get("protocol", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported (server speaks {PROTOCOL_VERSION})")
    model = message.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError("'start' needs a string 'model'")
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError("'params' must be an object")
    rate = message.get("input", {}).get("sample_rate_hz") if isinstance(message.get("input"), dict) else None
    if rate is not None and (not isinstance(rate, int) or rate not in SUPPORTED_INPUT_RATES_HZ):
        raise ProtocolError(
            f"input sample rate {rate!r} Hz is not supported; use one of {list(SUPPORTED_INPUT_RATES_HZ)}",
            "bad_sample_rate",
        )
    audio_codec, video_codec = parse_output(message)
    share = message.get("share", False)
    if not isinstance(share, bool):
        raise ProtocolError("'share' must be true or false")
    return StartRequest(model, params, rate, audio_codec, video_codec, share)


def parse_output(message: dict[str, Any]) -> tuple[AudioCodec, VideoCodec]:
    """The codecs a `start` or `watch` message asks for (default Opus and VP8)."""
    output = message.get("output", {})
    if not isinstance(output, dict):
        raise ProtocolError("'output' must be an object")
    audio_name = output.get("audio", "opus")
    video_name = output.get("video", "vp8")
    if audio_name not in AUDIO_CODECS:
        raise ProtocolError(f"audio codec {audio_name!r} is not supported; use one of {sorted(AUDIO_CODECS)}")
    if video_name not in VIDEO_CODECS:
        raise ProtocolError(f"video codec {video_name!r} is not supported; use one of {sorted(VIDEO_CODECS)}")
    return AUDIO_CODECS[audio_name], VIDEO_CODECS[video_name]


def session_reply(kind: str, session_id: str, model: str, streams: list[str], spec: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """The server's ``ready`` (own session) or ``watching`` (shared session) reply, the same on every transport.

    Protocol version, session id, model, the streams that will flow, ``extra`` fields and the model's stream
    spec (``StreamSpec.describe()``).
    """
    return {"type": kind, "protocol": PROTOCOL_VERSION, "session": session_id, "model": model, "streams": streams,
            **extra, **spec}
