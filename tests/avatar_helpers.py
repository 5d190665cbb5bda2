"""Helpers for avatar tests: fixture speech (two short espeak-ng utterances), PCM encoding, mouth measure."""

from __future__ import annotations

import base64
import wave
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"


def speech(name: str) -> np.ndarray:
    """Fixture utterance 'agent' or 'user' as float32 16 kHz."""
    with wave.open(str(DATA / f"avatar_{name}_speech.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def b64_pcm16(samples: np.ndarray) -> str:
    """Float samples -> base64 PCM16 (the `say` event's audio field)."""
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def frame_energy(samples: np.ndarray, hop: int = 640) -> np.ndarray:
    """RMS per 40 ms frame."""
    n = len(samples) // hop
    return np.sqrt((samples[: n * hop].reshape(n, hop) ** 2).mean(1))


def mouth_darkness(frame: np.ndarray) -> float:
    """How much open mouth a rendered frame shows: dark-red pixels in the mouth area (robust to JPEG)."""
    h, w = frame.shape[:2]
    box = frame[int(h * 0.52) : int(h * 0.78), int(w * 0.36) : int(w * 0.64)].astype(np.int32)
    dark = (box[..., 0] < 140) & (box[..., 1] < 80) & (box[..., 2] < 90) & (box[..., 0] > box[..., 2])
    return float(dark.mean())
