"""Wan2.1's causal 3D VAE decoder, streaming: each call decodes the next latent frames from a feature cache.

Module names follow diffusers' ``AutoencoderKLWan`` (``decoder.up_blocks.N.resnets.M.conv1`` ...), the layout
of ``vae/diffusion_pytorch_model.safetensors`` in ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``; only the decoder and
``post_quant_conv`` are built (the encoder's tensors are deliberately ignored at load).

The decoder: a causal conv in, a middle block (residual, per-frame single-head attention, residual), four up
blocks of residual blocks (the first two upsample time x2 and space x2, the third space only), an RMS norm,
SiLU and a causal conv to RGB. Every 3x3x3 conv is causal in time: it sees the current and the two previous
frames of its input. The *feature cache* is exactly those two previous input frames of every such conv (zeros
at the start), so decoding a clip chunk by chunk equals decoding it in one go. Wan's temporal upsampler is
skipped for the very first latent frame (it becomes one video frame, later latent frames four each) and its
history starts after that frame; :class:`DecoderState` carries that flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Per-channel statistics of Wan2.1's latent space (diffusers' AutoencoderKLWan config): DiT latents are
# normalised, the decoder takes latents * std + mean.
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass
class DecoderState:
    """One batch's feature cache: the two previous input frames of every causal conv (by conv index)."""

    frames: dict[int, torch.Tensor] = field(default_factory=dict)
    started: bool = False  # the first latent frame has been decoded

    @staticmethod
    def stack(states: Sequence[DecoderState]) -> DecoderState:
        """One state for a batch of sessions (all started, or none)."""
        if len({s.started for s in states}) > 1:
            raise ValueError("a batch mixes streams that have and have not started")
        if len(states) == 1:  # one stream: its own state, no copy (a full-resolution cache is ~1 GB in bf16)
            return states[0]
        keys = states[0].frames.keys()
        return DecoderState({k: torch.cat([s.frames[k] for s in states]) for k in keys}, states[0].started)

    def split(self, sizes: int) -> list[DecoderState]:
        """Per-session states of a batch (views)."""
        if sizes == 1:
            return [self]
        parts = [DecoderState({}, self.started) for _ in range(sizes)]
        for k, v in self.frames.items():
            for i, row in enumerate(v.split(1)):
                parts[i].frames[k] = row
        return parts


class CausalConv3d(nn.Conv3d):
    """A Conv3d padded causally in time; with a cache index it continues from the cached frames."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int], padding=0) -> None:
        super().__init__(in_dim, out_dim, kernel, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.history = 2 * pt  # previous frames the kernel reaches back to
        self.spatial_pad = (pw, pw, ph, ph)
        self.cache_index = -1  # set by the decoder for convs with history

    def forward(self, x: torch.Tensor, state: DecoderState | None = None) -> torch.Tensor:
        """X (B, C, T, H, W) -> (B, C', T, H, W); updates ``state`` (None: zero history, nothing kept)."""
        if self.history:
            if state is not None and self.cache_index in state.frames:
                prev = state.frames[self.cache_index].to(x.dtype)
            else:
                prev = x.new_zeros(x.shape[0], x.shape[1], self.history, *x.shape[3:])
            x = torch.cat([prev, x], dim=2)
            if state is not None:
                state.frames[self.cache_index] = x[:, :, -self.history:].clone()
        return super().forward(F.pad(x, self.spatial_pad + (0, 0)))


class ChannelRMSNorm(nn.Module):
    """RMS norm over channels (dim 1) with a learned gain ``gamma``, Wan's VAE norm."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x (B, C, ...)."""
        return F.normalize(x.float(), dim=1).to(x.dtype) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """RMS norm, SiLU, causal 3x3x3 conv, twice, plus a (1x1x1 conv) shortcut."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = ChannelRMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, state: DecoderState | None) -> torch.Tensor:
        """X (B, C, T, H, W)."""
        h = self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), state)
        x = self.conv2(F.silu(self.norm2(x)), state)
        return x + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing, no cache)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X (B, C, T, H, W)."""
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        q, k, v = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each (BT, HW, C)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        y = self.proj(y.transpose(1, 2).reshape(b * t, c, h, w))
        return x + y.reshape(b, t, c, h, w).transpose(1, 2)


class MidBlock(nn.Module):
    """Residual, attention, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([FrameAttention(dim)])

    def forward(self, x: torch.Tensor, state: DecoderState | None) -> torch.Tensor:
        """X (B, C, T, H, W)."""
        x = self.resnets[0](x, state)
        return self.resnets[1](self.attentions[0](x), state)


class Upsample(nn.Module):
    """Space x2 (nearest, then a 3x3 conv halving channels); with ``temporal``, first time x2 by a causal conv."""

    def __init__(self, dim: int, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0)) if temporal else None

    def forward(self, x: torch.Tensor, state: DecoderState | None, first: bool) -> torch.Tensor:
        """X (B, C, T, H, W) -> (B, C/2, T or 2T, 2H, 2W); ``first``: the stream's first latent frame."""
        b, c, t, h, w = x.shape
        if self.time_conv is not None and not first:
            x = self.time_conv(x, state).reshape(b, 2, c, t, h, w)
            x = torch.stack([x[:, 0], x[:, 1]], dim=3).reshape(b, c, 2 * t, h, w)  # frame i -> frames 2i, 2i+1
            t = 2 * t
        frames = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w).float()).to(x.dtype)
        return frames.reshape(b, t, c // 2, 2 * h, 2 * w).transpose(1, 2)


class UpBlock(nn.Module):
    """``num_res_blocks + 1`` residual blocks, then an optional upsampler."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample: str | None) -> None:
        super().__init__()
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList(ResidualBlock(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.upsamplers = nn.ModuleList([Upsample(out_dim, upsample == "3d")]) if upsample else None

    def forward(self, x: torch.Tensor, state: DecoderState | None, first: bool) -> torch.Tensor:
        """X (B, C, T, H, W)."""
        for resnet in self.resnets:
            x = resnet(x, state)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, state, first)
        return x


class Decoder(nn.Module):
    """Wan2.1's VAE decoder (diffusers' ``WanDecoder3d`` layout)."""

    def __init__(self, dim: int = 96, z_dim: int = 16, dim_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 temporal_upsample: Sequence[bool] = (True, True, False)) -> None:
        super().__init__()
        dims = [dim * m for m in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                in_dim //= 2  # the previous upsampler halved the channels
            last = i == len(dim_mult) - 1
            blocks.append(UpBlock(in_dim, out_dim, num_res_blocks,
                                  None if last else ("3d" if temporal_upsample[i] else "2d")))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 3, 3, padding=1)

    def forward(self, x: torch.Tensor, state: DecoderState | None, first: bool) -> torch.Tensor:
        """Latents (B, z, T, h, w) -> RGB (B, 3, T' , 8h, 8w)."""
        x = self.mid_block(self.conv_in(x, state), state)
        for block in self.up_blocks:
            x = block(x, state, first)
        return self.conv_out(F.silu(self.norm_out(x)), state)


class StreamingWanDecoder(nn.Module):
    """``post_quant_conv`` + :class:`Decoder`, decoding normalised DiT latents chunk by chunk."""

    def __init__(self, dim: int = 96, z_dim: int = 16, dim_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 temporal_upsample: Sequence[bool] = (True, True, False),
                 latent_mean: Sequence[float] = WAN21_LATENT_MEAN, latent_std: Sequence[float] = WAN21_LATENT_STD
                 ) -> None:
        super().__init__()
        self.post_quant_conv = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder(dim, z_dim, dim_mult, num_res_blocks, temporal_upsample)
        self.register_buffer("latent_mean", torch.tensor(latent_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", torch.tensor(latent_std).view(1, -1, 1, 1, 1), persistent=False)
        caching = [m for m in self.decoder.modules() if isinstance(m, CausalConv3d) and m.history]
        for i, conv in enumerate(caching):
            conv.cache_index = i

    def new_state(self) -> DecoderState:
        """The state of a stream that has decoded nothing yet."""
        return DecoderState()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, state: DecoderState) -> torch.Tensor:
        """Normalised latents (B, C, T, h, w) -> video in [-1, 1] (B, 3, frames, 8h, 8w); advances ``state``.

        The stream's first latent frame gives one video frame, every later one four.
        """
        z = self.post_quant_conv(latents * self.latent_std.to(latents.dtype) + self.latent_mean.to(latents.dtype))
        parts = []
        if not state.started:
            parts.append(self.decoder(z[:, :, :1], state, first=True))
            state.started = True
            z = z[:, :, 1:]
        if z.shape[2]:
            parts.append(self.decoder(z, state, first=False))
        return torch.cat(parts, dim=2).clamp(-1.0, 1.0)


def vae_key(key: str) -> str | None:
    """A diffusers ``AutoencoderKLWan`` key -> ours; the encoder's tensors are not used (None)."""
    if key.startswith(("encoder.", "quant_conv.")):
        return None
    return key
