"""models/params.py: cheap checks from headers on the loop, full decodes with limits enforced before decoding."""

from __future__ import annotations

import base64
import io
import struct
import time
import wave
import zlib

import numpy as np
import pytest

from models.errors import ParamError
from models.params import (
    HEADER_BYTES,
    base64_head,
    decode_image,
    decode_wav,
    image_size,
    image_upload,
    seed_param,
    unknown_params,
    wav_upload,
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def wav(samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    """PCM WAV bytes; ``samples`` (frames, channels) or (frames,) float in [-1, 1]."""
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    if width == 1:
        pcm = np.clip(x * 127 + 128, 0, 255).astype(np.uint8)
    else:
        pcm = np.clip(x * (2 ** (8 * width - 1) - 1), -(2 ** (8 * width - 1)), 2 ** (8 * width - 1) - 1)
        pcm = pcm.astype({2: "<i2", 4: "<i4"}[width])
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR chunk (no pixel data): what a giant image's first bytes look like."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_seed_and_unknown_params_have_one_message_style():
    assert seed_param({"seed": 7}) == 7 and seed_param({}, default=0) == 0
    assert isinstance(seed_param({}), int)
    for bad in ("x", 1.5, True, 2**70):
        with pytest.raises(ParamError, match=r"^'seed' must be an integer"):
            seed_param({"seed": bad})
    with pytest.raises(ParamError, match=r"model 'm' does not know parameters \['b'\]; it takes \['a'\]"):
        unknown_params("m", {"a": 1, "b": 2}, {"a"})


def test_base64_head_reads_only_the_start():
    raw = bytes(range(256)) * 4000  # 1 MB
    head, num_bytes = base64_head(b64(raw), "x", "bytes", max_bytes=2_000_000)
    assert num_bytes == len(raw) and head == raw[:HEADER_BYTES]
    with pytest.raises(ParamError, match="at most 1000 are accepted"):
        base64_head(b64(raw), "x", "bytes", max_bytes=1000)
    with pytest.raises(ParamError, match="not valid base64"):
        base64_head("abc", "x", "bytes", max_bytes=1000)
    with pytest.raises(ParamError, match="'x' must be a base64 string of bytes"):
        base64_head(5, "x", "bytes", max_bytes=1000)


def test_wav_header_checks_and_decode():
    t = np.arange(48_000 * 2) / 48_000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo8 = wav(np.stack([tone, tone], 1), 48_000, width=1, channels=2)  # 8-bit 48 kHz stereo: accepted
    upload = wav_upload(b64(stereo8), "ref", max_s=30)
    assert (upload.sample_rate_hz, upload.num_channels, upload.sample_width_bytes) == (48_000, 2, 1)
    assert abs(upload.seconds - 2.0) < 1e-6
    audio, rate = decode_wav(upload)
    assert rate == 48_000 and audio.shape == (96_000,) and abs(np.abs(audio).max() - 0.5) < 0.02
    with pytest.raises(ParamError, match="'ref' is 2.0 s; send at most 1 s"):
        wav_upload(b64(stereo8), "ref", max_s=1)
    with pytest.raises(ParamError, match="send at least 3 s"):
        wav_upload(b64(stereo8), "ref", min_s=3, max_s=30)
    with pytest.raises(ParamError, match="8-48 kHz"):
        wav_upload(b64(wav(tone[:9600], 96_000)), "ref", max_s=30)
    with pytest.raises(ParamError, match="not a usable WAV"):
        wav_upload(b64(b"RIFF\x00\x00\x00\x00WAVEjunk"), "ref", max_s=30)
    # a header that claims an hour: the duration is what the bytes sent hold
    lying = bytearray(wav(tone[:16_000], 16_000))
    lying[40:44] = struct.pack("<I", 16_000 * 2 * 3600)
    assert abs(wav_upload(b64(bytes(lying)), "ref", max_s=30).seconds - 1.0) < 1e-6
    # non-PCM (IEEE float, format 3) is refused from the header
    floating = bytearray(wav(tone[:16_000], 16_000, width=4))
    floating[20:22] = struct.pack("<H", 3)
    with pytest.raises(ParamError, match="not PCM"):
        wav_upload(b64(bytes(floating)), "ref", max_s=30)


def test_giant_image_is_refused_from_its_header_before_decoding():
    giant = b64(png_header(16_000, 16_000) + b"\x00" * 1000)
    assert image_upload(giant, "portrait", 1_500_000) == giant  # the loop's check: signature and size only
    started = time.perf_counter()
    with pytest.raises(ParamError, match="16000x16000 pixels; at most 16 megapixels"):
        decode_image(giant, "portrait", max_pixels=4096 * 4096)
    assert time.perf_counter() - started < 0.1  # nothing was decoded (it took 6.2 s before)
    with pytest.raises(ParamError, match="not a decodable image"):
        image_upload(b64(b"GIF89a" + b"\x00" * 20), "portrait", 1_500_000)
    with pytest.raises(ParamError, match="at most 100 are accepted"):
        image_upload(giant, "portrait", 100)


def test_image_size_reads_png_and_jpeg_headers():
    import av

    image = np.zeros((48, 80, 3), np.uint8)
    image[:, :40] = 200
    for codec, fmt in (("png", "rgb24"), ("mjpeg", "yuvj420p")):
        buf = io.BytesIO()
        with av.open(buf, "w", format="image2pipe") as container:
            stream = container.add_stream(codec)
            stream.width, stream.height, stream.pix_fmt = 80, 48, fmt
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=fmt)
            for packet in [*stream.encode(frame), *stream.encode()]:
                container.mux(packet)
        raw = buf.getvalue()
        assert image_size(raw) == (80, 48), codec
        decoded = decode_image(b64(raw), "portrait", max_pixels=10_000)
        assert decoded.shape == (48, 80, 3) and decoded[:, :30].mean() > 150 > decoded[:, 50:].mean() + 100
        with pytest.raises(ParamError, match="megapixels"):
            decode_image(b64(raw), "portrait", max_pixels=1000)
