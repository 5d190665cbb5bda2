"""MeanVC's two audio front ends, written out in torch: the content model's Kaldi fbank and the DiT's mel.

- :func:`kaldi_fbank`: what MeanVC's runtime feeds its ASR (``torchaudio.compliance.kaldi.fbank`` with
  25 ms frames, 10 ms shift, 80 bins, no dither, ``snip_edges``, on audio scaled to 16-bit range): frames
  of one signal's samples, so a stream's chunks (with the last 240 samples kept, 400 - 160) give exactly
  the frames of the whole signal. Written here because torchaudio's binary does not load with this torch;
  ``tests/test_meanvc.py`` checks it against torchaudio's own Python source.
- :class:`MeanVCMel`: the mel the DiT generates and reads its reference prompt in (1024-point STFT of 40 ms
  Hann windows every 10 ms, centred with reflection, 80 Slaney mel bins up to 8 kHz, dB clamped at -115,
  shifted by -20 dB and normalised to [-1, 1]). The vocoder reads ``(mel + 1) / 2``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE_HZ = 16_000
FBANK_WINDOW = 400  # 25 ms
FBANK_HOP = 160  # 10 ms
FBANK_FFT = 512
MEL_HOP = 160  # the DiT's mel frame: 10 ms


def _kaldi_mel(f_hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + f_hz / 700.0)


def kaldi_mel_banks(num_bins: int = 80, sample_rate_hz: int = SAMPLE_RATE_HZ, low_hz: float = 20.0) -> torch.Tensor:
    """Kaldi's triangular mel filters (num_bins, FBANK_FFT // 2 + 1) on its mel scale, Nyquist column zero."""
    nyquist = sample_rate_hz / 2
    lo, hi = _kaldi_mel(np.float64(low_hz)), _kaldi_mel(np.float64(nyquist))
    delta = (hi - lo) / (num_bins + 1)
    b = np.arange(num_bins)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    mel = _kaldi_mel(sample_rate_hz / FBANK_FFT * np.arange(FBANK_FFT // 2))[None]
    banks = np.maximum(0.0, np.minimum((mel - left) / (center - left), (right - mel) / (right - center)))
    return torch.from_numpy(np.pad(banks, ((0, 0), (0, 1)))).float()


def povey_window(length: int = FBANK_WINDOW) -> torch.Tensor:
    """Kaldi's default window: a symmetric Hann window to the power 0.85."""
    return torch.hann_window(length, periodic=False, dtype=torch.float64).pow(0.85).float()


def kaldi_fbank(audio: torch.Tensor, banks: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Log mel energies (B, frames, bins) of audio (B, T) in [-1, 1]: frames start every 10 ms, none padded."""
    x = audio.float() * 32768.0
    frames = x.unfold(1, FBANK_WINDOW, FBANK_HOP)  # (B, F, 400)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove the DC offset
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - 0.97 * previous) * window  # pre-emphasis (first sample against itself), window
    power = torch.fft.rfft(frames, n=FBANK_FFT).abs().pow(2)  # (B, F, 257)
    energies = power @ banks.T
    return energies.clamp_min(torch.finfo(torch.float32).eps).log()


def slaney_mel_filters(num_mels: int = 80, n_fft: int = 1024, sample_rate_hz: int = SAMPLE_RATE_HZ,
                       fmin_hz: float = 0.0, fmax_hz: float = 8000.0) -> torch.Tensor:
    """Slaney-scale, area-normalised mel filters (num_mels, n_fft // 2 + 1), as librosa's defaults build them."""

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        linear = f / (200.0 / 3)
        log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log_part, linear)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    fft_hz = np.linspace(0, sample_rate_hz / 2, n_fft // 2 + 1)
    mel_hz = mel_to_hz(np.linspace(hz_to_mel(fmin_hz), hz_to_mel(fmax_hz), num_mels + 2))
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2 : num_mels + 2] - mel_hz[:num_mels]))[:, None]
    return torch.from_numpy(weights).float()


class MeanVCMel(torch.nn.Module):
    """Audio (B, T) at 16 kHz -> normalised log-mel (B, frames, 80) in [-1, 1], one frame per 10 ms (centred)."""

    def __init__(self, n_fft: int = 1024, win: int = 640, hop: int = MEL_HOP, num_mels: int = 80) -> None:
        super().__init__()
        self.n_fft, self.win, self.hop = n_fft, win, hop
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        self.register_buffer("filters", slaney_mel_filters(num_mels, n_fft), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """The mel of whole signals (``center=True``: T // hop + 1 frames)."""
        spec = torch.stft(audio, self.n_fft, self.hop, self.win, self.window, center=True, pad_mode="reflect",
                          return_complex=True)
        magnitude = (spec.real.pow(2) + spec.imag.pow(2) + 1e-6).sqrt()  # (B, F, frames)
        mel = self.filters @ magnitude
        min_level = math.exp(-115 / 20 * math.log(10))
        db = 20 * torch.log10(mel.clamp_min(min_level)) - 20
        return (2 * (db + 115) / 115 - 1).clamp(-1, 1).transpose(1, 2)


def upsample_content(previous_last: torch.Tensor, encoded: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Content frames at 40 ms (B, N, D) -> mel rate (B, num_frames, D), as MeanVC's runtime does per chunk.

    The chunk's frames are preceded by the previous chunk's last one (``previous_last`` (B, 1, D)), linearly
    interpolated (corners aligned) to ``num_frames + 1`` points, and the first point dropped.
    """
    joined = torch.cat([previous_last, encoded], dim=1).transpose(1, 2)  # (B, D, N + 1)
    up = F.interpolate(joined, size=num_frames + 1, mode="linear", align_corners=True)
    return up[:, :, 1:].transpose(1, 2)
