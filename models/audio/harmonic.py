"""Harmonic oscillators: the periodic half of the VAE decoder's harmonic-plus-noise head (after DDSP / NSF).

Given a pitch per frame (from a tracker, held through unvoiced frames; not from the latents: the 25 Hz
latents do not carry pitch finely enough) and a spectral envelope per frame (the decoder's), voiced speech
is a sum of sinusoids at exact multiples of f0 with one running phase, so it is periodic at any pitch,
which the fixed-phase STFT head (bins 25 Hz apart) is not. Frame ``f``'s values are reached at the end of
its hop: inside hop ``f`` the pitch and the amplitudes move linearly from frame ``f - 1``'s to frame
``f``'s, so a chunk of frames needs nothing later than itself (no delay) and the previous frame's values
and the phase are the state.
"""

from __future__ import annotations

import math

import torch


def harmonic_amplitudes(log_env: torch.Tensor, f0: torch.Tensor, num: int, n_fft: int, rate_hz: int) -> torch.Tensor:
    """Amplitudes (B, N, num) of harmonics 1..num, read off a log-magnitude envelope (B, N, n_fft // 2 + 1).

    The envelope is on the scale of an n_fft Hann-windowed STFT, where a sinusoid of amplitude a peaks at
    a * n_fft / 4. Harmonics above 0.48 of the sample rate are silent (no aliasing). Whether a frame is
    voiced is the envelope's business (the decoder learns it from the latents), not the tracker's: its
    voicing decision misses many frames of deep voices, and a harmonic part gated by it left them noisy.
    """
    bins = log_env.shape[-1]
    h = torch.arange(1, num + 1, device=f0.device, dtype=f0.dtype)
    freq = f0[..., None] * h  # (B, N, num)
    pos = (freq * n_fft / rate_hz).clamp(0, bins - 1.001)
    lo = pos.floor().long()
    frac = pos - lo
    env = torch.gather(log_env, -1, lo) * (1 - frac) + torch.gather(log_env, -1, lo + 1) * frac
    audible = (freq < 0.48 * rate_hz).to(env.dtype)
    return env.clamp(max=8.0).exp() * audible / (n_fft / 4)


def synthesize(amps: torch.Tensor, f0: torch.Tensor, prev_amps: torch.Tensor, prev_f0: torch.Tensor,
               phase: torch.Tensor, hop: int, rate_hz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames' amplitudes (B, N, H) and f0 (B, N) -> audio (B, N * hop) and the phase after it (B,).

    ``prev_amps`` (B, H) and ``prev_f0`` (B,) are the previous frame's, ``phase`` (B,) the running phase in
    radians; the returned phase is wrapped to [0, 2 pi).
    """
    b, n, num = amps.shape
    ramp = torch.arange(1, hop + 1, device=amps.device, dtype=torch.float64) / hop  # reach frame f at its end
    f_prev = torch.cat([prev_f0[:, None], f0[:, :-1]], dim=1).double()
    inst = f_prev[..., None] + (f0.double() - f_prev)[..., None] * ramp  # (B, N, hop) Hz
    phi = phase.double()[:, None] + torch.cumsum(inst.reshape(b, -1) * (2 * math.pi / rate_hz), dim=-1)
    phi = torch.remainder(phi, 2 * math.pi)
    h = torch.arange(1, num + 1, device=amps.device, dtype=torch.float32)
    # in place: a second buffer of sines costs more in fresh pages than the sines themselves (3x at batch 8).
    # Harmonic-major (B, N, H, hop), so both ends' amplitudes apply as one (2, H) x (H, hop) product per frame:
    # the hop-major layout's (hop, H) x (H, 2) products ran ~6x slower (a two-column output per batch item).
    sines = (h[:, None] * phi.float().view(b, n, 1, hop)).sin_()  # (B, N, H, hop)
    a_prev = torch.cat([prev_amps[:, None], amps[:, :-1]], dim=1)
    ends = torch.stack([a_prev, amps - a_prev], dim=-2).view(b * n, 2, num)  # amplitude at the start, slope
    start, slope = torch.bmm(ends, sines.view(b * n, num, hop)).view(b, n, 2, hop).unbind(2)
    return (start + ramp.float() * slope).reshape(b, n * hop), phi[:, -1].float()
