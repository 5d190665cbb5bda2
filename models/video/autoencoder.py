"""The causal latent autoencoder of the video family: pixels <-> a small latent grid, decoded per block.

Compression is ``time_factor`` frames x 8 x 8 pixels into one latent frame of ``latent_channels`` channels
(Wan's VAE: 4 x 8 x 8, 16 channels; ours 2 x 8 x 8, 8 channels). The decoder is *causal in time*: latent
frame t is decoded from latent frames t and t-1 only, so the generator decodes each block as soon as it is
denoised and pixels stream (LongLive's reference code decodes once after the whole video). The streaming
state is one latent frame (:meth:`LatentAutoencoder.decode_stream`), and decoding a clip block by block
equals decoding it in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape of the autoencoder."""

    time_factor: int = 2  # video frames per latent frame
    latent_channels: int = 8  # channels of a latent frame
    widths: tuple[int, ...] = (24, 48, 64)  # conv widths at 1/2, 1/4, 1/8 resolution


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class LatentAutoencoder(nn.Module):
    """Per-latent-frame encoder and causal (current + previous latent) decoder."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, tf, c = cfg.widths, cfg.time_factor, cfg.latent_channels
        enc: list[nn.Module] = [nn.Conv2d(3 * tf, w[0], 3, stride=2, padding=1)]
        for a, b in zip(w[:-1], w[1:], strict=True):
            enc += [ResBlock(a), nn.SiLU(), nn.Conv2d(a, b, 3, stride=2, padding=1)]
        enc += [ResBlock(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], c, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(2 * c, w[-1], 3, padding=1), ResBlock(w[-1])]
        for a, b in zip(w[::-1][:-1], w[::-1][1:], strict=True):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1), ResBlock(b)]
        dec += [nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w[0], 3 * tf, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        # Per-channel latent statistics, set after training so the DiT sees unit-variance latents.
        self.register_buffer("latent_mean", torch.zeros(c))
        self.register_buffer("latent_std", torch.ones(c))

    @property
    def downsample(self) -> int:
        """Spatial pixels per latent cell along each side."""
        return 2 ** len(self.cfg.widths)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (B, N, 3, H, W) in [-1, 1] (N a multiple of time_factor) -> latents (B, N/tf, C, h, w)."""
        b, n, _, h, w = frames.shape
        tf = self.cfg.time_factor
        x = frames.reshape(b * n // tf, tf * 3, h, w)  # (B*L, tf*3, H, W): a latent frame's pixels
        z = self.encoder(x)
        z = z.reshape(b, n // tf, *z.shape[1:])  # (B, L, C, h, w)
        return (z - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def decode(self, latents: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, L, C, h, w) -> frames (B, L*tf, 3, H, W) in [-1, 1]; ``prev`` (B, C, h, w) is latent t-1."""
        b, n, c, h, w = latents.shape
        z = latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        first = torch.zeros_like(z[:, :1]) if prev is None else (prev * self.latent_std[:, None, None]
                                                                 + self.latent_mean[:, None, None])[:, None]
        before = torch.cat([first, z[:, :-1]], dim=1)  # (B, L, C, h, w): latent t-1 of each t
        x = torch.cat([z, before], dim=2).reshape(b * n, 2 * c, h, w)
        y = self.decoder(x)  # (B*L, tf*3, H, W)
        tf = self.cfg.time_factor
        return y.reshape(b, n * tf, 3, *y.shape[-2:]).clamp(-1.0, 1.0)

    def decode_stream(self, latents: torch.Tensor, prev: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one block (B, L, C, h, w) given the last latent of the previous block; returns (frames, new prev)."""
        return self.decode(latents, prev), latents[:, -1]


def to_unit(frames_uint8: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [-1, 1]."""
    return frames_uint8.movedim(-1, -3).float() / 127.5 - 1.0


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8."""
    return ((frames.movedim(-3, -1) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
