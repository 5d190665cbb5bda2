"""A causal frame-wise pitch tracker (YIN), batched in torch: what the harmonic vocoder is driven by.

Frame ``f`` (hop ``frame_hop`` samples) reads the ``window`` samples that end at sample ``(f + 1) * frame_hop``
of the stream, so a frame is known as soon as its hop has arrived and streaming (:class:`StreamingPitch`)
equals one pass over the whole signal (left-padded with zeros). The estimate follows de Cheveigné and
Kawahara's YIN: the cumulative-mean-normalised difference function, the first dip below a threshold (else the
global minimum), parabolic interpolation. Voicing is soft: 1 where the dip is deep (periodic), 0 where it is
shallow or the frame is near silence, linear between. Frames above 0.5 count as voiced: their pitch is
trusted (the vocoder holds it through the others) and the VC generator learns the speaker's register from
them. Whether the vocoder's harmonics sound is the decoder's call, not this voicing's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class PitchConfig:
    """Frames and search range of the tracker (16 kHz, 10 ms hops, 60-500 Hz by default)."""

    sample_rate_hz: int = 16_000
    frame_hop: int = 160
    window: int = 512  # samples read per frame; the difference function integrates window - max lag of them
    fmin_hz: float = 60.0
    fmax_hz: float = 500.0
    threshold: float = 0.2  # YIN's absolute threshold on the normalised difference
    voiced_dip: tuple[float, float] = (0.15, 0.4)  # dip depth at which voicing is 1 .. 0
    silence_rms: float = 3e-3  # ~-50 dBFS: quieter frames are unvoiced

    @property
    def max_lag(self) -> int:
        """Longest period searched, in samples."""
        return int(self.sample_rate_hz / self.fmin_hz) + 1

    @property
    def min_lag(self) -> int:
        """Shortest period searched, in samples."""
        return int(self.sample_rate_hz / self.fmax_hz)


def track(frames: torch.Tensor, cfg: PitchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames (..., window) -> (f0 in Hz, voicing in [0, 1]), each (...,). f0 is the best guess even when unvoiced."""
    shape = frames.shape[:-1]
    x = frames.reshape(-1, cfg.window).float()
    x = x - x.mean(dim=-1, keepdim=True)
    length, lags = cfg.window - cfg.max_lag, cfg.max_lag + 1  # samples the difference integrates; lags 0..max
    size = 1 << (cfg.window * 2 - 1).bit_length()
    # r(tau) = sum_j x_j x_{j + tau} over j < length, by one FFT cross-correlation
    spec = torch.fft.rfft(x, size) * torch.fft.rfft(x[:, :length], size).conj()
    corr = torch.fft.irfft(spec, size)[:, :lags]
    energy = F.pad(torch.cumsum(x * x, dim=-1), (1, 0))  # energy[:, i] = sum of x_j^2 over j < i
    e_tau = energy[:, length : length + lags] - energy[:, :lags]  # sum of x_{j + tau}^2 over j < length
    diff = (e_tau[:, :1] + e_tau - 2 * corr)[:, 1:].clamp_min(0)  # d(tau), tau = 1..max_lag
    tau_axis = torch.arange(1, lags, device=x.device, dtype=x.dtype)
    cmndf = diff * tau_axis / torch.cumsum(diff, dim=-1).clamp_min(1e-12)  # index i: tau = i + 1
    lo = cfg.min_lag
    search = cmndf[:, lo - 1 : cfg.max_lag - 1]  # tau = min_lag .. max_lag - 1 (one lag left on each side)
    # the first lag below the threshold, walked down to its local minimum; else the global minimum
    below = search < cfg.threshold
    rising = torch.cat([search[:, 1:] > search[:, :-1], torch.ones_like(below[:, :1])], dim=-1)
    candidate = below & rising
    first = torch.where(candidate.any(-1), candidate.float().argmax(-1), search.argmin(-1))
    tau = first + lo
    around = torch.gather(cmndf, 1, (tau - 2)[:, None] + torch.arange(3, device=x.device))  # tau - 1, tau, tau + 1
    left, mid, right = around.unbind(-1)
    curve = left - 2 * mid + right
    shift = torch.where(curve > 1e-9, 0.5 * (left - right) / curve.clamp_min(1e-9), torch.zeros_like(mid))
    f0 = cfg.sample_rate_hz / (tau + shift.clamp(-0.5, 0.5))
    dip_lo, dip_hi = cfg.voiced_dip
    voicing = ((dip_hi - mid) / (dip_hi - dip_lo)).clamp(0, 1)
    # both the compared start and the whole window must be heard (a window reaching back into silence
    # compares zeros with zeros: no difference, which is not a pitch)
    floor = cfg.silence_rms**2
    loud = (energy[:, length] > floor * length) & (energy[:, -1] > floor * cfg.window)
    return f0.view(shape), (voicing * loud).view(shape)


def track_signal(audio: torch.Tensor, cfg: PitchConfig = PitchConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio (B, T) -> (f0, voicing), each (B, T // frame_hop): frame f reads the window ending at (f + 1) * hop."""
    n = audio.shape[-1] // cfg.frame_hop
    padded = torch.nn.functional.pad(audio[..., : n * cfg.frame_hop], (cfg.window - cfg.frame_hop, 0))
    return track(padded.unfold(-1, cfg.window, cfg.frame_hop), cfg)


def hold_unvoiced(f0: torch.Tensor, voicing: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """f0 (B, N) with each unvoiced frame's value replaced by the last voiced one (``last`` (B,) before the first).

    A harmonic oscillator keeps its pitch through consonants and pauses instead of following a guess.
    """
    voiced = voicing > 0.5
    idx = torch.arange(f0.shape[1], device=f0.device).expand_as(f0)
    src = torch.where(voiced, idx, torch.full_like(idx, -1)).cummax(dim=1).values  # last voiced frame so far
    held = torch.gather(f0, 1, src.clamp_min(0))
    return torch.where(src >= 0, held, last[:, None].expand_as(f0))


def decoder_pitch(audio: torch.Tensor, left: int = 0, cfg: PitchConfig = PitchConfig()) -> torch.Tensor:
    """The pitch a harmonic decoder is driven by, for whole clips (training, benches): (B, left + T) -> (B, T // hop).

    ``left``: samples (a multiple of the hop) given before the clips. Frame f reads the window ending at sample
    (f + 1) * hop of the clip, as a stream's tracker would; unvoiced frames hold the last voiced pitch, those
    before the first the clip's median (a stream holds its target's).
    """
    f0, voicing = track_signal(audio, cfg)
    skip = left // cfg.frame_hop
    f0, voicing = f0[:, skip:], voicing[:, skip:]
    voiced = voicing > 0.5
    typical = torch.stack([row[v].median() if v.any() else row.new_tensor(150.0)
                           for row, v in zip(f0, voiced, strict=True)])
    return hold_unvoiced(f0, voicing, typical)


def median_pitch(audio: np.ndarray, default_hz: float = 150.0) -> float:
    """Median pitch (Hz) of a clip's voiced frames (``default_hz`` when fewer than 20 are voiced)."""
    f0, voicing = track_signal(torch.from_numpy(np.asarray(audio, np.float32))[None])
    voiced = f0[voicing > 0.5]
    return float(voiced.median()) if len(voiced) >= 20 else default_hz


class StreamingPitch:
    """:func:`track_signal` chunk by chunk: keeps the last ``window - frame_hop`` samples of each stream."""

    def __init__(self, cfg: PitchConfig = PitchConfig()) -> None:
        self.cfg = cfg

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Zeros: silence before the stream."""
        return torch.zeros(batch, self.cfg.window - self.cfg.frame_hop, device=device)

    def __call__(self, audio: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Audio (B, T), T a multiple of frame_hop -> (f0, voicing) (B, T // frame_hop) and the new state."""
        full = torch.cat([state, audio], dim=-1)
        f0, voicing = track(full.unfold(-1, self.cfg.window, self.cfg.frame_hop), self.cfg)
        return f0, voicing, full[:, full.shape[1] - state.shape[1] :]
