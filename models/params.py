"""Checks shared by the families' parameters and events, written once with one message style.

Two stages, matching the generator contract (models/base.py):

- on the event loop (``validate_params``): checks that cost microseconds whatever the client sent -- types,
  ranges, a string's length, the header of an uploaded WAV or image read from the first bytes of its base64
  text (:func:`wav_upload`, :func:`image_upload`). Nothing is decoded, resampled or parsed in full here.
- off the loop (``prepare_session`` / ``prepare_event``, on the engine's preparation thread): the full
  decode, with the limits read from the header enforced *before* decoding (:func:`decode_wav`,
  :func:`decode_image`), so a 16000x16000 PNG or an hour of 48 kHz audio is refused unread.

Every message names the field in quotes and says what it must be: ``'seed' must be an integer, got 'x'``.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.errors import ParamError

HEADER_BYTES = 49_152  # an upload's header must lie within its first 48 KiB (64 Ki base64 characters)
_SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts


# -- plain values -------------------------------------------------------------------------------------------
def seed_param(params: Any, default: int | None = None) -> int:
    """``params['seed']``, an integer torch can seed with; ``default`` (None: a random one) when absent."""
    if "seed" not in params:
        return int.from_bytes(os.urandom(4), "little") if default is None else default
    seed = params["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not _SEED_RANGE[0] <= seed < _SEED_RANGE[1]:
        raise ParamError(f"'seed' must be an integer, got {seed!r}")
    return seed


def unknown_params(model: str, params: Any, known: frozenset[str] | set[str]) -> None:
    """Refuse parameters a model does not take, naming them and the ones it does."""
    if unknown := set(params) - set(known):
        raise ParamError(f"model '{model}' does not know parameters {sorted(unknown)}; it takes {sorted(known)}")


# -- base64 uploads -------------------------------------------------------------------------------------------
def base64_param(data: Any, name: str, what: str) -> bytes:
    """The bytes of a base64 string parameter (a full decode: off the event loop for large uploads)."""
    if not isinstance(data, str):
        raise ParamError(f"'{name}' must be a base64 string of {what}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ParamError(f"'{name}' is not valid base64: {e}") from e


def base64_head(data: Any, name: str, what: str, max_bytes: int) -> tuple[bytes, int]:
    """The first ``HEADER_BYTES`` of a base64 string and its decoded length, without decoding the rest.

    Cheap whatever the size (the event loop's check); the rest of the string is validated when it is
    decoded off the loop. Refuses a non-string and, from the length alone, more than ``max_bytes``.
    """
    if not isinstance(data, str):
        raise ParamError(f"'{name}' must be a base64 string of {what}")
    num_bytes = len(data) // 4 * 3 - data[-2:].count("=")
    if len(data) % 4 or num_bytes <= 0:
        raise ParamError(f"'{name}' is not valid base64: its length is not a positive multiple of 4")
    if num_bytes > max_bytes:
        raise ParamError(f"'{name}' is {num_bytes} bytes; at most {max_bytes} are accepted")
    head_chars = min(len(data), HEADER_BYTES // 3 * 4)
    try:
        return base64.b64decode(data[:head_chars], validate=True), num_bytes
    except (binascii.Error, ValueError) as e:
        raise ParamError(f"'{name}' is not valid base64: {e}") from e


# -- WAV -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WavUpload:
    """A base64 WAV whose header was checked on the loop; :func:`decode_wav` reads its samples off it."""

    name: str  # the parameter it came in, for messages
    data: str  # the base64 text, not decoded yet
    sample_rate_hz: int
    num_channels: int
    sample_width_bytes: int
    num_frames: int  # per channel, as far as the bytes sent reach

    @property
    def seconds(self) -> float:
        """Duration of the audio."""
        return self.num_frames / self.sample_rate_hz


def wav_upload(data: Any, name: str, *, max_s: float, min_s: float = 0.0, max_bytes: int = 8_000_000) -> WavUpload:
    """Check a base64 PCM WAV from its header: format, rate 8-48 kHz, 1-2 channels, duration within bounds."""
    head, num_bytes = base64_head(data, name, "a WAV file", max_bytes)
    try:
        rate, channels, width, data_offset, data_size = _riff_header(head)
    except ValueError as e:
        raise ParamError(f"'{name}' is not a usable WAV: {e}") from e
    if not 8000 <= rate <= 48_000 or channels not in (1, 2) or width not in (1, 2, 4):
        raise ParamError(f"'{name}' is not a usable WAV: {width * 8}-bit, {channels} channels at {rate} Hz "
                         f"(8-, 16- or 32-bit PCM, mono or stereo, 8-48 kHz expected)")
    frame_bytes = channels * width
    num_frames = max(0, min(data_size, num_bytes - data_offset)) // frame_bytes
    upload = WavUpload(name, data, rate, channels, width, num_frames)
    if upload.seconds > max_s:
        raise ParamError(f"'{name}' is {upload.seconds:.1f} s; send at most {max_s:g} s")
    if upload.seconds < min_s:
        raise ParamError(f"'{name}' is {upload.seconds:.2f} s; send at least {min_s:g} s")
    return upload


def decode_wav(upload: WavUpload) -> tuple[np.ndarray, int]:
    """Mono float32 samples and rate of a checked upload (the full decode: off the event loop)."""
    from models.audio.dsp import read_wav

    raw = base64_param(upload.data, upload.name, "a WAV file")
    try:
        audio, rate = read_wav(raw)
    except ValueError as e:
        raise ParamError(f"'{upload.name}' is not a usable WAV: {e}") from e
    if not np.isfinite(audio).all():
        raise ParamError(f"'{upload.name}' has NaN or infinite samples")
    return audio[: upload.num_frames], rate


def _riff_header(head: bytes) -> tuple[int, int, int, int, int]:
    """(rate, channels, sample width, data offset, data size) of a PCM WAV from its first bytes."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk == b"fmt ":
            if size < 16 or pos + 24 > len(head):
                raise ValueError("truncated 'fmt ' chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            if fmt is None:
                raise ValueError("'data' before 'fmt '")
            tag, channels, rate, bits = fmt
            if tag != 1:
                raise ValueError(f"format {tag} is not PCM")
            if bits % 8 or not bits:
                raise ValueError(f"{bits}-bit samples")
            return rate, channels, bits // 8, pos + 8, size
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    raise ValueError(f"no 'data' chunk in the first {HEADER_BYTES} bytes")


# -- images -----------------------------------------------------------------------------------------------
def image_upload(data: Any, name: str, max_bytes: int) -> str:
    """Check a base64 PNG or JPEG from its magic bytes and size; returns the base64 text (decoded later)."""
    head, _ = base64_head(data, name, "a PNG or JPEG image", max_bytes)
    if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff")):
        raise ParamError(f"'{name}' is not a decodable image (PNG or JPEG expected): unknown file signature")
    return data


def decode_image(data: str, name: str, max_pixels: int) -> np.ndarray:
    """RGB (H, W, 3) uint8 of a checked PNG/JPEG upload; its size is read from the header and capped first."""
    import av

    raw = base64_param(data, name, "a PNG or JPEG image")
    try:
        width, height = image_size(raw)
    except ValueError as e:
        raise ParamError(f"'{name}' is not a decodable image (PNG or JPEG expected): {e}") from e
    if width * height > max_pixels:
        raise ParamError(f"'{name}' is {width}x{height} pixels; at most {max_pixels // 1_000_000} megapixels")
    try:
        with av.open(io.BytesIO(raw)) as container:
            frame = next(container.decode(video=0))
            if (frame.width, frame.height) != (width, height):
                raise ValueError(f"decoded {frame.width}x{frame.height}, header says {width}x{height}")
            return frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, ValueError, IndexError) as e:
        raise ParamError(f"'{name}' is not a decodable image (PNG or JPEG expected): {e}") from e


_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn: not DHT, JPG, DAC


def image_size(raw: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR or a JPEG's frame header; ValueError for anything else."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            raise ValueError("PNG without an IHDR chunk")
        return struct.unpack_from(">II", raw, 16)
    if raw.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(raw):
            if raw[pos] != 0xFF:
                raise ValueError("malformed JPEG segment")
            marker = raw[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
                pos += 2
                continue
            (length,) = struct.unpack_from(">H", raw, pos + 2)
            if marker in _JPEG_FRAME_MARKERS:
                if pos + 9 > len(raw):
                    break
                height, width = struct.unpack_from(">HH", raw, pos + 5)
                return width, height
            pos += 2 + length
        raise ValueError("JPEG without a frame header")
    raise ValueError("unknown file signature")
