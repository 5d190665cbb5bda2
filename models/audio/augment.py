"""Speech augmentation for training data: what a real microphone, room and call do to a voice.

Each function takes 16 kHz mono float32 audio and a ``numpy.random.Generator`` and returns new audio; the
corpus script (scripts/make_human_speech.py) chains a random subset per utterance with :func:`augment`.
Tempo and pitch use the ``sox`` command (Debian package, installed by the Makefile next to flite); the Opus
round trip uses PyAV (a dependency of the server). Everything else is numpy, so it is deterministic for a
given generator state.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable

import numpy as np

from models.audio.dsp import read_wav, resample, write_wav

SAMPLE_RATE_HZ = 16_000


def _sox(x: np.ndarray, effect: list[str]) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.wav"), os.path.join(tmp, "out.wav")
        write_wav(src, x, SAMPLE_RATE_HZ)
        subprocess.run(["sox", src, dst, *effect], check=True, capture_output=True)
        y, rate = read_wav(dst)
    return y if rate == SAMPLE_RATE_HZ else resample(y, rate, SAMPLE_RATE_HZ)


def change_tempo(x: np.ndarray, rng: np.random.Generator, max_change: float = 0.10) -> np.ndarray:
    """Faster or slower by up to ``max_change`` (±10 %), pitch kept (sox WSOLA ``tempo -s``)."""
    factor = 1.0 + rng.uniform(-max_change, max_change)
    return _sox(x, ["tempo", "-s", f"{factor:.4f}"])


def shift_pitch(x: np.ndarray, rng: np.random.Generator, max_semitones: float = 3.0) -> np.ndarray:
    """Pitch moved by up to ``max_semitones`` either way, duration kept (sox ``pitch``)."""
    cents = 100.0 * rng.uniform(-max_semitones, max_semitones)
    return _sox(x, ["pitch", f"{cents:.0f}"])


def change_speed(x: np.ndarray, rng: np.random.Generator, low: float = 0.85, high: float = 1.18) -> np.ndarray:
    """Played faster or slower by a factor in [low, high]: tempo, pitch and formants move together.

    Speed perturbation (Ko et al., 2015): to a recognizer the formants moving is another vocal tract, so a few
    training speakers stand for many. Resampled in-process (no sox): cheap enough to apply on the fly.
    """
    factor = rng.uniform(low, high)
    return resample(x, int(round(SAMPLE_RATE_HZ * factor)), SAMPLE_RATE_HZ)


def room_impulse(rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """A synthetic room: a direct path, a few early reflections, exponentially decaying diffuse noise."""
    length = int(SAMPLE_RATE_HZ * min(1.2, rt60_s * 1.2))
    t = np.arange(length) / SAMPLE_RATE_HZ
    decay = np.exp(-6.91 * t / rt60_s)  # -60 dB at rt60
    tail = rng.standard_normal(length) * decay * 0.25
    tail[: int(0.004 * SAMPLE_RATE_HZ)] = 0.0  # diffuse field starts after the first reflections
    h = tail
    h[0] = 1.0
    for _ in range(rng.integers(3, 7)):  # early reflections, 2-25 ms
        k = int(rng.uniform(0.002, 0.025) * SAMPLE_RATE_HZ)
        h[k] += rng.uniform(0.2, 0.6) * (1 if rng.random() < 0.5 else -1)
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def add_reverb(x: np.ndarray, rng: np.random.Generator, rt60_range_s: tuple[float, float] = (0.15, 0.7)) -> np.ndarray:
    """Convolve with a synthetic room of reverberation time in ``rt60_range_s``; level kept."""
    h = room_impulse(rng, rng.uniform(*rt60_range_s))
    y = np.convolve(x, h)[: len(x)]
    return _match_rms(y, x)


def colored_noise(rng: np.random.Generator, num_samples: int, exponent: float) -> np.ndarray:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    f = np.fft.rfftfreq(num_samples, 1 / SAMPLE_RATE_HZ)
    f[0] = f[1] if len(f) > 1 else 1.0
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), num_samples)
    return (noise / (np.std(noise) + 1e-9)).astype(np.float32)


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db_range: tuple[float, float] = (10.0, 30.0)) -> np.ndarray:
    """Background noise (white, pink or brown, sometimes with a hum) at an SNR in ``snr_db_range``."""
    noise = colored_noise(rng, len(x), float(rng.choice([0.0, 1.0, 2.0])))
    if rng.random() < 0.3:  # mains hum and its harmonics
        t = np.arange(len(x)) / SAMPLE_RATE_HZ
        f0 = rng.choice([50.0, 60.0])
        hum = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3)) / k for k in range(1, 5))
        noise = noise + hum.astype(np.float32) / np.std(hum)
    snr_db = rng.uniform(*snr_db_range)
    speech_power = np.mean(x**2) + 1e-12
    noise *= np.sqrt(speech_power / (np.mean(noise**2) + 1e-12) / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def _filter(x: np.ndarray, gain_of_hz: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    spectrum = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE_HZ)
    return np.fft.irfft(spectrum * gain_of_hz(f), len(x)).astype(np.float32)


def telephone_band(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A call's 300-3,400 Hz band (edges jittered), steep skirts; level kept."""
    low, high = rng.uniform(250, 350), rng.uniform(3200, 3600)

    def gain(f: np.ndarray) -> np.ndarray:
        return 1 / np.sqrt(1 + (low / np.maximum(f, 1.0)) ** 12) / np.sqrt(1 + (f / high) ** 16)

    return _match_rms(_filter(x, gain), x)


def microphone_eq(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheap microphone: a low cut, a presence peak or dip and a high shelf, each random; level kept."""
    low_cut = rng.uniform(60, 200)
    peak_hz, peak_db, q = rng.uniform(1500, 5000), rng.uniform(-6, 8), rng.uniform(0.7, 2.0)
    shelf_db = rng.uniform(-10, 4)

    def gain(f: np.ndarray) -> np.ndarray:
        g_db = peak_db * np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / peak_hz) * q * 2) ** 2)
        g_db += shelf_db / (1 + np.exp(-(f - 5000) / 600))
        return 10 ** (g_db / 20) / np.sqrt(1 + (low_cut / np.maximum(f, 1.0)) ** 4)

    return _match_rms(_filter(x, gain), x)


def opus_round_trip(x: np.ndarray, rng: np.random.Generator, kbps_range: tuple[int, int] = (16, 32)) -> np.ndarray:
    """Encode to Opus at 16-32 kbit/s and back (PyAV/libopus), as a call or WebRTC link would."""
    import av

    bit_rate = int(rng.integers(kbps_range[0], kbps_range[1] + 1)) * 1000
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate = 48_000
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bit_rate
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = 48_000
    decoder.layout = "mono"
    pcm = (np.clip(resample(x, SAMPLE_RATE_HZ, 48_000), -1, 1) * 32767).astype(np.int16)
    frame_samples = 960  # 20 ms
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % frame_samples + frame_samples * 2, np.int16)])
    out = []
    for start in range(0, len(pcm), frame_samples):
        frame = av.AudioFrame.from_ndarray(pcm[None, start : start + frame_samples], format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = start
        for packet in encoder.encode(frame):
            out.extend(f.to_ndarray().reshape(-1) for f in decoder.decode(packet))
    for packet in encoder.encode(None):
        out.extend(f.to_ndarray().reshape(-1) for f in decoder.decode(packet))
    y = np.concatenate(out).astype(np.float32)
    if y.dtype.kind != "f" or np.abs(y).max() > 2:
        y = y / 32768.0
    y = resample(y, 48_000, SAMPLE_RATE_HZ)
    delay = _best_lag(x, y, max_lag=int(0.02 * SAMPLE_RATE_HZ))  # libopus's look-ahead
    return y[delay : delay + len(x)].astype(np.float32)


def _best_lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> int:
    n = min(len(x), len(y) - max_lag)
    scores = [float(np.dot(x[:n], y[lag : lag + n])) for lag in range(max_lag + 1)]
    return int(np.argmax(scores))


def change_level(x: np.ndarray, rng: np.random.Generator, db_range: tuple[float, float] = (-24.0, 0.0)) -> np.ndarray:
    """Quieter by up to 24 dB (a far or quiet microphone); peaks kept below full scale."""
    y = x * 10 ** (rng.uniform(*db_range) / 20)
    peak = np.abs(y).max()
    return (y / peak * 0.99 if peak > 0.99 else y).astype(np.float32)


def _match_rms(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    return (y * np.sqrt((np.mean(like**2) + 1e-12) / (np.mean(y**2) + 1e-12))).astype(np.float32)


# Order matters: the voice (tempo, pitch) first, then the room, the microphone, the noise, the link, the level.
AUGMENTATIONS: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], float]] = {
    "tempo": (change_tempo, 0.4),
    "pitch": (shift_pitch, 0.3),
    "reverb": (add_reverb, 0.4),
    "mic_eq": (microphone_eq, 0.4),
    "telephone": (telephone_band, 0.15),
    "noise": (add_noise, 0.5),
    "opus": (opus_round_trip, 0.3),
    "level": (change_level, 0.5),
}


def augment(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Apply each augmentation with its probability, in the order above; returns audio and what was applied.

    Text-aligned properties (the words) are kept; tempo changes the duration.
    """
    applied = []
    for name, (fn, probability) in AUGMENTATIONS.items():
        if rng.random() < probability:
            x = fn(x, rng)
            applied.append(name)
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x / peak * 0.99
    return x.astype(np.float32), applied
