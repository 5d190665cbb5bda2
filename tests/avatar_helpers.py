"""Helpers for avatar tests and benches: fixture speech (two short espeak-ng utterances), PCM encoding."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from models.avatar.generator import Avatar
from streaming.client.ws import pcm16_base64

DATA = Path(__file__).parent / "data"


def speech(name: str) -> np.ndarray:
    """Fixture utterance 'agent' or 'user' as float32 16 kHz."""
    with wave.open(str(DATA / f"avatar_{name}_speech.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def b64_pcm16(samples: np.ndarray) -> str:
    """Float samples -> base64 PCM16 (the `say` event's audio field)."""
    return pcm16_base64(samples)


def tiny_avatar(size: int = 64, **options) -> Avatar:
    """A random-weight tiny avatar without a speech generator (fast; for plumbing tests)."""
    return Avatar(config="tiny", checkpoint="", width=size, height=size, tts=options.pop("tts", None), **options)
