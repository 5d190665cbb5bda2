"""Plain signal processing shared by the speech families: WAV I/O, resampling, log-mel features, trimming.

Kept free of model code so data scripts, benches and generators use one implementation. Everything here is
deterministic and works on numpy float32 mono signals in [-1, 1] unless a function says otherwise.
"""

from __future__ import annotations

import io
import math
import os
import wave
from functools import lru_cache

import numpy as np
import torch


def read_wav(source: str | bytes) -> tuple[np.ndarray, int]:
    """Decode a PCM WAV (path or bytes) to mono float32 and its rate; raises ValueError when malformed."""
    try:
        with wave.open(io.BytesIO(source) if isinstance(source, bytes) else source, "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise ValueError(f"not a readable PCM WAV file: {e}") from e
    if width not in (1, 2, 4) or channels < 1 or rate <= 0:
        raise ValueError(f"unsupported WAV format: {width * 8}-bit, {channels} channels, {rate} Hz")
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    x = (x - 128.0) / 128.0 if width == 1 else x / float(2 ** (8 * width - 1))
    return x.reshape(-1, channels).mean(axis=1), rate


def write_wav(path: str | os.PathLike, samples: np.ndarray, rate_hz: int) -> None:
    """Write mono float samples as a 16-bit PCM WAV file."""
    with open(path, "wb") as f:
        f.write(wav_bytes(samples, rate_hz))


def wav_bytes(samples: np.ndarray, rate_hz: int) -> bytes:
    """Mono float samples as the bytes of a 16-bit PCM WAV file (e.g. a `reference_audio` upload)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def resample(x: np.ndarray, from_hz: int, to_hz: int, half_taps: int = 16) -> np.ndarray:
    """Band-limited resampling by a Hann-windowed sinc (``2 * half_taps`` taps per output sample)."""
    if from_hz == to_hz or len(x) == 0:
        return x.astype(np.float32)
    ratio = to_hz / from_hz
    cutoff = min(1.0, ratio) * 0.95  # of the input Nyquist: anti-aliasing when downsampling
    num_out = int(math.floor(len(x) * ratio))
    t = np.arange(num_out) / ratio  # output times in input samples
    base = np.floor(t).astype(np.int64)
    offsets = np.arange(-half_taps + 1, half_taps + 1)
    idx = base[:, None] + offsets[None, :]  # (num_out, taps)
    d = t[:, None] - idx
    weights = cutoff * np.sinc(cutoff * d) * (0.5 + 0.5 * np.cos(np.pi * d / half_taps))
    weights[np.abs(d) >= half_taps] = 0.0
    padded = np.pad(x.astype(np.float64), (half_taps, half_taps + 1))
    return (padded[idx + half_taps] * weights).sum(axis=1).astype(np.float32)


def trim_silence(x: np.ndarray, rate_hz: int, threshold_db: float = -40.0, margin_ms: float = 60.0) -> np.ndarray:
    """Cut leading/trailing silence (frames below peak + threshold_db), keeping a margin."""
    frame = max(1, rate_hz // 100)
    num = len(x) // frame
    if num == 0:
        return x
    energy = np.sqrt((x[: num * frame].reshape(num, frame) ** 2).mean(axis=1) + 1e-12)
    loud = np.nonzero(20 * np.log10(energy / (energy.max() + 1e-12)) > threshold_db)[0]
    if len(loud) == 0:
        return x
    margin = int(margin_ms * rate_hz / 1000)
    return x[max(0, loud[0] * frame - margin) : min(len(x), (loud[-1] + 1) * frame + margin)]


@lru_cache(maxsize=8)
def mel_filterbank(
    rate_hz: int, n_fft: int, num_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """(num_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale."""
    fmax = fmax or rate_hz / 2

    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, rate_hz / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(np.array(fmin)), mel(np.array(fmax)), num_mels + 2))
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0, np.minimum((freqs - lower) / (center - lower), (upper - freqs) / (upper - center)))
    return torch.tensor(fb, dtype=torch.float32)


def log_mel(
    x: torch.Tensor, rate_hz: int = 16_000, n_fft: int = 1024, hop: int = 256, num_mels: int = 80
) -> torch.Tensor:
    """Log mel spectrogram (B, num_mels, frames) of waveforms (B, T); differentiable."""
    window = torch.hann_window(n_fft, device=x.device)
    spec = torch.stft(x, n_fft, hop, window=window, return_complex=True, center=True).abs()
    mel = mel_filterbank(rate_hz, n_fft, num_mels).to(x.device) @ spec
    return torch.log(mel.clamp_min(1e-5))


def mel_cepstral_distortion(ref: np.ndarray, hyp: np.ndarray, rate_hz: int = 16_000, num_coeffs: int = 13) -> float:
    """MCD in dB between two signals, frames aligned by dynamic time warping (c0 excluded).

    Cepstra are the orthonormal DCT of 40-band log-mel magnitudes (not SPTK mel-generalized cepstra), so
    values are comparable between systems measured here, not with published MCD numbers.
    """

    def cepstra(x: np.ndarray) -> np.ndarray:
        spec = torch.stft(torch.from_numpy(x.astype(np.float32)), 512, 160, window=torch.hann_window(512),
                          return_complex=True).abs()
        mel = (mel_filterbank(rate_hz, 512, 40) @ spec).T.numpy()  # (F, 40)
        m = np.log(np.maximum(mel, mel.max() * 1e-4))  # a floor 80 dB under the peak: silence stays finite
        n = m.shape[1]
        dct = np.sqrt(2.0 / n) * np.cos(np.pi / n * (np.arange(n)[None, :] + 0.5) * np.arange(num_coeffs + 1)[:, None])
        return (m @ dct.T)[:, 1:]  # orthonormal DCT-II, c0 (loudness) dropped

    a, b = cepstra(ref), cepstra(hyp)
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # (Fa, Fb)
    cost = np.full((len(a) + 1, len(b) + 1), np.inf)
    cost[0, 0] = 0.0
    steps = np.zeros_like(cost)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            prev = min((cost[i - 1, j - 1], i - 1, j - 1), (cost[i - 1, j], i - 1, j), (cost[i, j - 1], i, j - 1))
            cost[i, j] = dist[i - 1, j - 1] + prev[0]
            steps[i, j] = steps[prev[1], prev[2]] + 1
    # log-mel in natural log; 10 / ln 10 * sqrt(2) is the usual MCD constant for natural-log cepstra
    return float(10.0 / math.log(10) * math.sqrt(2) * cost[-1, -1] / steps[-1, -1])
