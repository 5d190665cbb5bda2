"""G.711 mu-law, the audio codec of fastrtc's WebSocket protocol."""

from __future__ import annotations

import numpy as np


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """G.711 mu-law bytes of int16 samples (what fastrtc's WebSocket protocol carries)."""
    x = pcm.astype(np.int32)
    sign = (x < 0).astype(np.int32)
    x = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.clip(np.floor(np.log2(x)).astype(np.int32) - 7, 0, 7)
    mantissa = (x >> (exponent + 3)) & 0x0F
    return (~((sign << 7) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """Int16 samples of G.711 mu-law bytes, as float32."""
    u = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0x0F
    x = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -x, x).astype(np.float32) / 32768
