"""Waveform VAE with non-parametric shortcut connections (after CLEAR / DC-AE), decoded chunk by chunk.

The speech families' latent codec: 16 kHz audio <-> continuous latents at ``sample_rate / hop`` frames/s.

- Encoder: a fixed STFT log-magnitude front end (frame hop = hop / prod(enc_down)), then strided 1-D
  convolutions down to the latent rate. Every down block adds a *shortcut* that needs no weights:
  space-to-channel (fold ``stride`` frames into channels) then average channel groups down to the block's
  width, so the convolution learns a residual over a lossless re-arrangement. (CLEAR convolves the raw
  waveform; on two CPU cores that encoder alone cost 4 s a training step, so the first x4 of
  downsampling is the STFT here.) The encoder is non-causal: it only encodes training audio and
  reference prompts, never a live stream.
- Decoder: *causal* convolutions at the latent rate, up blocks with the mirror shortcut (duplicate channels,
  channel-to-space), then a linear head to STFT log-magnitudes, a *fixed* phase, and overlap-add with a
  Hann window. The phase of bin k in frame f is ``phi0_k + 2 pi k f frame_hop / n_fft`` (each bin a
  sinusoid at its centre frequency, random fixed initial phases): overlapping frames add coherently, so
  the output's spectrum follows the predicted magnitudes. A learned phase head (Vocos-style) was tried
  first: without adversarial training it reached its losses through interference between frames while
  its magnitudes stayed flat, and the audio was a blur; a fixed phase sounds phasey but keeps formants and
  harmonics, which is what intelligibility (and an MFCC recognizer) needs.
  The output is the input delayed by ``synth_len - frame_hop`` samples (``synth_len``: the synthesis
  window, n_fft unless a config shortens it for less delay), which makes it strictly causal:
  the samples of latent k depend only on latents <= k. Streaming decode therefore equals offline decode
  exactly when each chunk is decoded together with ``context_latents`` latents of left context
  (:meth:`WaveformVAE.decode_chunk`).
- Harmonic-plus-noise head (``VAEConfig.harmonics``, the VC family's vocoder): the fixed-phase head becomes
  the noise part, and a second head predicts a spectral envelope that a bank of oscillators at exact
  multiples of a given pitch per frame reads its amplitudes from (models/audio/harmonic.py). The pitch comes
  from outside (a tracker of the speaker), so the output is periodic at any pitch; with a 20 ms synthesis
  window for the noise part the delay is 10 ms. Streamed by :class:`StreamingDecoder` (the oscillators'
  phase runs from the stream's start), not by ``decode_chunk``.
- Pitch head (``VAEConfig.pitch_head``, the TTS family's vocoder, which has no speaker to track): a small
  per-frame MLP on the decoder trunk predicts each 10 ms frame's log f0 and voicing from the latents (trained
  with the YIN tracker of models/audio/pitch_track.py as teacher). A harmonic decoder given no pitch drives
  its oscillators with that prediction, held through unvoiced frames like a tracked one; it is causal and
  per frame, so streaming still equals one offline decode (to the phase drift that f0 rounding integrates).

This file holds the model; beside it: ``vae_stream.py`` (the streaming decoder), ``slot_vocoder.py`` (its
per-session rows, the serving vocoder), ``vae_training.py`` (losses and loading a checkpoint's VAE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.audio.harmonic import harmonic_amplitudes, synthesize
from models.audio.pitch_track import hold_unvoiced


@dataclass
class VAEConfig:
    """Sizes of the waveform VAE."""

    sample_rate_hz: int = 16_000
    latent_dim: int = 32  # channels of one latent frame
    hop: int = 640  # samples per latent frame (640 -> 25 latents/s)
    enc_down: tuple[int, ...] = (2, 2)  # encoder downsampling from the STFT frame rate to the latent rate
    enc_channels: int = 256  # encoder width
    dec_channels: int = 256  # decoder width at the latent rate
    dec_up: tuple[int, ...] = (2, 2)  # decoder upsampling to the STFT frame rate (same product as enc_down)
    dec_up_channels: tuple[int, ...] = (256, 128)  # width after each up block
    dec_blocks: int = 2  # residual blocks at the latent rate (dilations 1, 2, ...); one after each up block
    n_fft: int = 640  # STFT size of the encoder front end and of the output head (window length)
    kernel: int = 3  # decoder kernel size (causal)
    synth_window: int = 0  # decoder's synthesis window (0: n_fft); shorter -> less delay, see delay_samples
    harmonics: int = 0  # > 0: a harmonic-plus-noise head with this many harmonics, driven by a pitch track
    pitch_head: int = 0  # > 0: a pitch predictor (MLP of this width on the decoder trunk) drives the harmonics

    @property
    def synth_len(self) -> int:
        """Samples of each synthesised frame: the first ``synth_len`` of the head's n_fft-point inverse FFT."""
        return self.synth_window or self.n_fft

    @property
    def frame_hop(self) -> int:
        """Samples per STFT frame of the decoder head."""
        up = 1
        for u in self.dec_up:
            up *= u
        return self.hop // up


class CausalConv(nn.Conv1d):
    """Conv1d padded on the left only: output t depends on inputs <= t."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X (B, C, T) -> (B, C', T)."""
        pad = (self.kernel_size[0] - 1) * self.dilation[0]
        return super().forward(F.pad(x, (pad, 0)))


class ResBlock(nn.Module):
    """Two convolutions with a residual; causal or centred."""

    def __init__(self, channels: int, kernel: int, dilation: int, causal: bool) -> None:
        super().__init__()
        conv = CausalConv if causal else nn.Conv1d
        pad = {} if causal else {"padding": dilation * (kernel - 1) // 2}
        self.conv1 = conv(channels, channels, kernel, dilation=dilation, **pad)
        self.conv2 = conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X (B, C, T) -> same."""
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class DownBlock(nn.Module):
    """Strided conv plus the space-to-channel averaging shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, self.cout = stride, cout
        self.res = ResBlock(cin, 3, 1, causal=False)
        self.conv = nn.Conv1d(cin, cout, 2 * stride, stride=stride)
        if (cin * stride) % cout:
            raise ValueError(f"shortcut needs cin * stride ({cin * stride}) divisible by cout ({cout})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, T) -> (B, cout, T / stride)."""
        b, c, t = x.shape
        x = self.res(x)
        folded = x.view(b, c, t // self.stride, self.stride).transpose(2, 3).reshape(b, c * self.stride, -1)
        shortcut = folded.view(b, self.cout, -1, t // self.stride).mean(2)  # average channel groups
        return self.conv(F.pad(F.silu(x), (self.stride // 2, self.stride - self.stride // 2))) + shortcut


class UpBlock(nn.Module):
    """Causal conv to ``cout * factor`` channels, channel-to-space, plus the duplicating shortcut."""

    def __init__(self, cin: int, cout: int, factor: int, kernel: int) -> None:
        super().__init__()
        self.factor, self.cout = factor, cout
        self.conv = CausalConv(cin, cout * factor, kernel)
        if (cout * factor) % cin:
            raise ValueError(f"shortcut needs cout * factor ({cout * factor}) divisible by cin ({cin})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, T) -> (B, cout, T * factor)."""
        b, c, t = x.shape
        dup = x.repeat_interleave(self.cout * self.factor // c, dim=1)  # (B, cout * factor, T)
        y = self.conv(F.silu(x)) + dup
        return y.view(b, self.cout, self.factor, t).transpose(2, 3).reshape(b, self.cout, t * self.factor)


class WaveformVAE(nn.Module):
    """Encode 16 kHz audio to latents (B, latent_dim, T / hop) and decode them back, causally."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.enc_channels
        self.enc_in = nn.Conv1d(cfg.n_fft // 2 + 1, ch, 3, padding=1)
        self.enc = nn.Sequential(*(DownBlock(ch, ch, s) for s in cfg.enc_down), ResBlock(ch, 3, 1, causal=False))
        self.enc_out = nn.Conv1d(ch, 2 * cfg.latent_dim, 3, padding=1)
        k = cfg.kernel
        self.dec_in = CausalConv(cfg.latent_dim, cfg.dec_channels, k)
        stages = [nn.Sequential(*(ResBlock(cfg.dec_channels, k, 2**i, True) for i in range(cfg.dec_blocks)))]
        widths = (cfg.dec_channels, *cfg.dec_up_channels)
        for i, factor in enumerate(cfg.dec_up):
            stages.append(UpBlock(widths[i], widths[i + 1], factor, k))
            stages.append(ResBlock(widths[i + 1], k, 1, True))
        self.dec = nn.Sequential(*stages)
        self.head = nn.Conv1d(widths[-1], cfg.n_fft // 2 + 1, 1)  # log-magnitude per bin
        # Harmonic-plus-noise: ``head`` becomes the noise part (fixed phase, as above) and ``harm_head`` the
        # spectral envelope the harmonics of a given pitch are read off (models/audio/harmonic.py).
        self.harm_head = nn.Conv1d(widths[-1], cfg.n_fft // 2 + 1, 1) if cfg.harmonics else None
        # Per frame: (log f0 in Hz, voicing logit), from the trunk's features (causal: 1x1 convolutions only).
        self.pitch_head = None
        if cfg.pitch_head:
            self.pitch_head = nn.Sequential(nn.Conv1d(widths[-1], cfg.pitch_head, 1), nn.SiLU(),
                                            nn.Conv1d(cfg.pitch_head, 2, 1))
            with torch.no_grad():  # start at a typical voice, unvoiced
                self.pitch_head[-1].bias.copy_(torch.tensor([math.log(PITCH_START_HZ), -1.0]))
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)
        self.register_buffer("synth", torch.hann_window(cfg.synth_len, periodic=True), persistent=False)
        if cfg.synth_len > cfg.n_fft or cfg.synth_len % cfg.frame_hop:
            raise ValueError("synth_window must be a multiple of the frame hop, at most n_fft")
        if cfg.hop % cfg.n_fft:
            raise ValueError("hop must be a multiple of n_fft so the fixed phase repeats every latent")
        bins = torch.arange(cfg.n_fft // 2 + 1, dtype=torch.float64)
        phi0 = torch.rand(len(bins), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 * math.pi
        frame = torch.arange(cfg.hop // cfg.frame_hop, dtype=torch.float64)  # frames per latent: phase period
        phase = phi0[None, :] + 2 * math.pi * bins[None, :] * frame[:, None] * cfg.frame_hop / cfg.n_fft
        self.register_buffer("phase", torch.polar(torch.ones_like(phase), phase).to(torch.complex64), persistent=False)
        # Normalisation of latents for the generators (set from data after training; identity until then).
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))

    @property
    def delay_samples(self) -> int:
        """Decoded audio lags the encoded audio by this many samples (causal overlap-add).

        A sample is final once every frame overlapping it is made: ``synth_len - frame_hop`` samples after
        the frame that starts it. ``synth_window`` 320 synthesises the same 640-point magnitudes under a
        shorter window: 10 ms instead of 30 (tried for VC and not shipped: docs/models/vc.md).
        """
        return self.cfg.synth_len - self.cfg.frame_hop

    @property
    def context_latents(self) -> int:
        """Left context a chunk needs so chunked decoding equals offline decoding (the receptive field)."""
        k = self.cfg.kernel - 1
        field = k * (1 + 2**self.cfg.dec_blocks - 1)  # dec_in + dilated blocks, in latents
        up = 1
        for factor in self.cfg.dec_up:
            field += k / up + k / (up * factor)  # the up conv at its input rate + one block after it
            up *= factor
        overlap = (self.cfg.synth_len // self.cfg.frame_hop - 1) / up  # earlier frames overlapping a chunk
        return int(field + overlap) + 1

    # -- encoder -------------------------------------------------------------------------------------
    def encode(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveform (B, T) with T a multiple of hop -> (mean, logvar), each (B, latent_dim, T / hop)."""
        hop = self.cfg.frame_hop
        spec = torch.stft(wav, self.cfg.n_fft, hop, window=self.window, center=True, return_complex=True)
        feats = spec.abs()[..., : wav.shape[-1] // hop].clamp_min(1e-5).log()  # (B, F, T / frame_hop)
        x = self.enc(self.enc_in(feats))
        mean, logvar = self.enc_out(F.silu(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-12, 6)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, T) -> unit-scale latents the generators model."""
        return (z - self.latent_mean[:, None]) / self.latent_std[:, None]

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`."""
        return z * self.latent_std[:, None] + self.latent_mean[:, None]

    # -- decoder -------------------------------------------------------------------------------------
    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, T) -> the heads' input (B, C, T * up), causal in T."""
        return F.silu(self.dec(self.dec_in(z)))

    def log_magnitudes(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, T) -> predicted STFT log-magnitudes (B, n_fft // 2 + 1, T * up), causal in T."""
        return self.head(self.features(z)).float()

    def frames(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, T) -> windowed time-domain STFT frames (B, T * up, synth_len), causal in T.

        ``z`` must start at a latent boundary of the stream (the fixed phase repeats every latent).
        """
        return self._frames(self.log_magnitudes(z))

    def _frames(self, log_mag: torch.Tensor) -> torch.Tensor:
        """:meth:`frames` from the head's log-magnitudes (B, F, frames)."""
        mag = log_mag.clamp(max=8.0).exp().transpose(1, 2)  # (B, frames, F)
        period = self.phase.shape[0]
        phase = self.phase.repeat(mag.shape[1] // period, 1)  # (frames, F)
        frames = torch.fft.irfft(mag * phase, n=self.cfg.n_fft)[..., : self.cfg.synth_len]
        return frames * self.synth  # (B, frames, synth_len)

    def overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, synth_len) frames at frame_hop -> (B, N * frame_hop) samples, the last synth_len - hop dropped."""
        b, n, size = frames.shape
        hop = self.cfg.frame_hop
        out = F.fold(
            frames.transpose(1, 2), output_size=(1, (n - 1) * hop + size), kernel_size=(1, size), stride=(1, hop)
        )  # (B, 1, 1, L)
        gain = overlap_gain(self.synth, hop)
        return out.view(b, -1)[:, : n * hop] / gain

    def predict_pitch(self, feats: torch.Tensor) -> torch.Tensor:
        """The pitch head on the trunk's features (B, C, N) -> (B, N, 2): log f0 (Hz) and voicing logit per frame."""
        if self.pitch_head is None:
            raise ValueError("this decoder has no pitch head")
        return self.pitch_head(feats).float().transpose(1, 2)

    def decode(self, z: torch.Tensor, f0: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, D, T) -> audio (B, T * hop), delayed by :attr:`delay_samples`.

        A harmonic decoder (``cfg.harmonics``) also takes the pitch of the stream's frames from its start,
        ``f0`` (B, T * up) in Hz, held through unvoiced frames (models/audio/pitch_track.py); with a pitch
        head, ``f0`` None uses the head's prediction (:func:`predicted_f0`, not differentiated).
        """
        if not self.cfg.harmonics:
            return self.overlap_add(self.frames(z))
        return self.decode_features(self.features(z), f0)

    def decode_features(self, feats: torch.Tensor, f0: torch.Tensor | None = None) -> torch.Tensor:
        """A harmonic decoder's :meth:`decode` from the trunk's :meth:`features` (B, C, T * up)."""
        if f0 is None:
            if self.pitch_head is None:
                raise ValueError("a harmonic decoder needs f0 per frame")
            f0 = predicted_f0(self.predict_pitch(feats).detach())
        noise = self.overlap_add(self._frames(self.head(feats).float()))
        return noise + periodic_part(self.cfg, self.harm_head(feats).float().transpose(1, 2), f0)

    def decode_chunk(self, z_context: torch.Tensor, num_new: int) -> torch.Tensor:
        """Audio of the last ``num_new`` latents of ``z_context`` (B, D, context + num_new), (B, num_new * hop).

        Equal to the same samples of :meth:`decode` over the whole stream when the context holds at least
        :attr:`context_latents` latents (or starts at the stream's beginning). Not for a harmonic decoder,
        whose phase runs from the stream's start: stream it with :class:`StreamingDecoder`.
        """
        if self.cfg.harmonics:
            raise ValueError("a harmonic decoder streams with StreamingDecoder (its phase spans the stream)")
        return self.decode(z_context)[:, -num_new * self.cfg.hop :]


# The pitch a predicted track holds before the stream's first voiced frame (and a zero state's f0 stands for).
PITCH_START_HZ = 120.0
PITCH_RANGE_HZ = (50.0, 600.0)


def predicted_f0(pitch: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
    """A pitch head's output (B, N, 2) (log f0, voicing logit) -> the f0 (B, N) that drives the oscillators.

    Voiced frames (voicing > 0.5) give their own pitch, the others hold the last voiced frame's; ``last`` (B,)
    is the f0 before the first frame (a streaming decoder's previous output; zero or None: the stream's start).
    """
    f0 = pitch[..., 0].float().exp().clamp(*PITCH_RANGE_HZ)
    voicing = torch.sigmoid(pitch[..., 1].float())
    start = torch.full_like(f0[:, 0], PITCH_START_HZ)
    last = start if last is None else torch.where(last > 0, last, start)
    return hold_unvoiced(f0, voicing, last)


def periodic_part(cfg: VAEConfig, log_env: torch.Tensor, f0: torch.Tensor,
                  state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """A harmonic decoder's periodic part: envelope (B, N, F) and f0 (B, N) -> audio (B, N * hop).

    ``state`` (B, H + 2): the previous frame's amplitudes, its f0 and the running phase; with it the new
    state is returned too. Without it the stream starts here: the zero state, as a streaming decoder's.
    """
    amps = harmonic_amplitudes(log_env, f0, cfg.harmonics, cfg.n_fft, cfg.sample_rate_hz)
    if state is None:
        prev = torch.zeros_like(amps[:, 0]), torch.zeros_like(f0[:, 0]), torch.zeros_like(f0[:, 0])
    else:
        prev = state[:, :-2], state[:, -2], state[:, -1]
    audio, phase = synthesize(amps, f0, *prev, cfg.frame_hop, cfg.sample_rate_hz)
    if state is None:
        return audio
    return audio, torch.cat([amps[:, -1], f0[:, -1:], phase[:, None]], dim=1)


def overlap_gain(window: torch.Tensor, hop: int) -> torch.Tensor:
    """The overlap-add normaliser of a synthesis window at ``hop``: sum(w^2) / hop.

    Per sample, Hann windows overlap-add to len / (2 hop), so the output scale is (len / 2) / sum(w^2) = 4 / 3
    for every Hann length: a shorter synthesis window keeps the trained decoder's loudness.
    """
    return (window**2).sum() / hop
